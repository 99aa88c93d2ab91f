"""Redis (or ElastiCache) through redis.asyncio: short timeouts, a brief circuit breaker, Lua scripts.

Every multi-key operation is one script on keys of one service, so it is atomic and runs on a cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..decisions import AuthDecision
from .base import (
    DEAD_LETTER_MAX,
    DEDUP_TTL,
    DEFAULT_MAX_CONNECTIONS,
    MAX_BATCH_FIELDS,
    Batch,
    LimitClaim,
    Reservation,
    Settlement,
    StoreUnavailable,
    batch_key,
    batches_key,
    dead_letter_key,
    done_key,
    owners_key,
    pending_key,
)

# KEYS: pending, done-marker. ARGV: dedup ttl, then field/delta pairs.
ADD_USAGE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: pending, batches zset, the new batch's hash, owners hash. ARGV: now, lease end, new id, owner, max fields.
# Returns the id of an expired batch (taken over, now the owner's) or of a new batch of at most `max fields`
# pending fields, or false when there is nothing. A small pending hash is renamed; a large one is split, so a
# backlog never becomes one batch that no replica can verify and report within its lease.
TAKE_BATCH = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #expired > 0 then
  redis.call('ZADD', KEYS[2], ARGV[2], expired[1])
  redis.call('HSET', KEYS[4], expired[1], ARGV[4])
  return expired[1]
end
local size = redis.call('HLEN', KEYS[1])
if size == 0 then return false end
local max = tonumber(ARGV[5])
if size <= max then
  redis.call('RENAME', KEYS[1], KEYS[3])
else
  local taken, cursor = {}, '0'
  repeat
    local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', max)
    cursor = page[1]
    for i = 1, #page[2], 2 do
      if #taken < 2 * max then
        taken[#taken + 1] = page[2][i]
        taken[#taken + 1] = page[2][i + 1]
      end
    end
  until cursor == '0' or #taken >= 2 * max
  for i = 1, #taken, 2 do
    redis.call('HSET', KEYS[3], taken[i], taken[i + 1])
    redis.call('HDEL', KEYS[1], taken[i])
  end
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
return ARGV[3]
"""

# KEYS: batch hash, batches zset, owners hash. ARGV: batch id, owner, fields to delete.
# Only the lease's owner may forget fields: 0 (nothing done) once another replica has taken the batch over.
ACK = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
for i = 3, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return 1
"""

# KEYS: batches zset, owners hash. ARGV: batch id, owner, lease end. 0 when the owner no longer holds it.
RENEW = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: limit counters. ARGV: divisor, then per key: base, max, need, ttl.
# All or nothing; returns {1, grant1, free1, grant2, free2, ...} or {0, index, used, reserved}.
RESERVE = """
local divisor = tonumber(ARGV[1])
local free = {}
for i = 1, #KEYS do
  local o = 1 + (i - 1) * 4
  if redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('HSET', KEYS[i], 'u', ARGV[o + 1], 'r', 0)
    redis.call('EXPIRE', KEYS[i], ARGV[o + 4])
  end
  local u = tonumber(redis.call('HGET', KEYS[i], 'u') or 0)
  local r = tonumber(redis.call('HGET', KEYS[i], 'r') or 0)
  local f = tonumber(ARGV[o + 2]) - u - r
  if f < tonumber(ARGV[o + 3]) then return {0, i - 1, u, r} end
  free[i] = f
end
local out = {1}
for i = 1, #KEYS do
  local o = 1 + (i - 1) * 4
  local need = tonumber(ARGV[o + 3])
  local grant = need + math.floor((free[i] - need) / divisor)
  redis.call('HINCRBY', KEYS[i], 'r', grant)
  out[#out + 1] = grant
  out[#out + 1] = free[i] - grant
end
return out
"""

# KEYS: done-marker, then limit counters. ARGV: dedup ttl, then per counter: used, release, ttl, extra.
SETTLE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for i = 2, #KEYS do
  local o = 2 + (i - 2) * 4
  local used, release, extra = tonumber(ARGV[o]), tonumber(ARGV[o + 1]), tonumber(ARGV[o + 3])
  redis.call('HINCRBY', KEYS[i], 'u', used + extra)
  local r = tonumber(redis.call('HINCRBY', KEYS[i], 'r', -(used + release)))
  if r < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
  redis.call('EXPIRE', KEYS[i], ARGV[o + 2])
end
return 1
"""

# KEYS: limit counters. ARGV: per counter: value, ttl.
RAISE_USED = """
for i = 1, #KEYS do
  local value = tonumber(ARGV[(i - 1) * 2 + 1])
  local u = tonumber(redis.call('HGET', KEYS[i], 'u') or -1)
  if u < value then
    redis.call('HSET', KEYS[i], 'u', value)
    if u < 0 then redis.call('HSET', KEYS[i], 'r', 0) end
  end
  redis.call('EXPIRE', KEYS[i], ARGV[(i - 1) * 2 + 2])
end
return 1
"""


def _text(value: Any) -> str:
    """A reply element as text (the client answers bytes; redis-py types it as any reply shape)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """The Store on Redis; every failure becomes StoreUnavailable and opens the breaker for `retry_after`."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 0.5,
        retry_after: float = 1.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = aioredis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry_on_timeout=False,
            max_connections=max_connections + 1,  # one more for ping(), which must not wait behind requests
        )
        # Bounds the pool: a burst waits for a free connection (up to `timeout`) instead of opening thousands;
        # a wait that runs out is StoreUnavailable for that call only, without opening the breaker.
        self._slots = asyncio.Semaphore(max_connections)
        self._timeout = timeout
        self._retry_after = retry_after
        self._clock = clock
        self._down_until = 0.0
        self._available = True
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in {
                "add_usage": ADD_USAGE,
                "take_batch": TAKE_BATCH,
                "ack": ACK,
                "renew": RENEW,
                "reserve": RESERVE,
                "settle": SETTLE,
                "raise_used": RAISE_USED,
            }.items()
        }

    @property
    def available(self) -> bool:
        return self._available

    @property
    def shared(self) -> bool:
        return True

    @property
    def client(self) -> aioredis.Redis:
        """The raw client (tests and diagnostics)."""
        return self._redis

    async def _call(self, op: Callable[[], Any]) -> Any:
        """Run one Redis operation through the breaker."""
        if not self._available and self._clock() < self._down_until:
            raise StoreUnavailable("redis is down (circuit open)")
        if self._slots.locked():
            try:
                async with asyncio.timeout(self._timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise StoreUnavailable("redis: every pooled connection is busy") from None
        else:
            await self._slots.acquire()
        try:
            result = await op()
        except (RedisError, OSError) as exc:
            self._available = False
            self._down_until = self._clock() + self._retry_after
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from None
        finally:
            self._slots.release()
        self._available = True
        return result

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(lambda: self._scripts[name](keys=keys, args=args))

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda: self._redis.get(key))  # type: ignore[no-any-return]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(lambda: self._redis.set(key, value, px=max(1, int(ttl * 1000))))

    async def get_decision(self, key: str) -> AuthDecision | None:
        raw = await self.get(key)
        return None if raw is None else AuthDecision.from_json(raw)

    async def set_decision(self, key: str, decision: AuthDecision, ttl: float) -> None:
        await self.set(key, decision.to_json(), ttl)

    async def add_usage(self, service_id: str, flush_id: str, fields: dict[str, int]) -> None:
        args: list[Any] = [DEDUP_TTL]
        for field, delta in fields.items():
            args += [field, delta]
        await self._script("add_usage", [pending_key(service_id), done_key(service_id, flush_id)], args)

    async def take_batch(
        self,
        service_id: str,
        now: float,
        lease: float,
        new_id: str,
        *,
        owner: str | None = None,
        max_fields: int = MAX_BATCH_FIELDS,
    ) -> Batch | None:
        owner = owner or new_id
        keys = [
            pending_key(service_id),
            batches_key(service_id),
            batch_key(service_id, new_id),
            owners_key(service_id),
        ]
        taken = await self._script("take_batch", keys, [now, now + lease, new_id, owner, max(1, max_fields)])
        if not taken:
            return None
        batch_id = taken.decode() if isinstance(taken, bytes) else str(taken)
        raw = await self._call(lambda: self._redis.hgetall(batch_key(service_id, batch_id)))
        return Batch(batch_id, {k.decode(): int(v) for k, v in raw.items()}, owner)

    async def ack(self, service_id: str, batch_id: str, owner: str, fields: list[str]) -> bool:
        keys = [batch_key(service_id, batch_id), batches_key(service_id), owners_key(service_id)]
        return bool(await self._script("ack", keys, [batch_id, owner, *fields]))

    async def renew(self, service_id: str, batch_id: str, owner: str, until: float) -> bool:
        keys = [batches_key(service_id), owners_key(service_id)]
        return bool(await self._script("renew", keys, [batch_id, owner, until]))

    async def dead_letter(self, service_id: str, entries: list[str]) -> None:
        key = dead_letter_key(service_id)

        async def push() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, *entries)
                pipe.ltrim(key, 0, DEAD_LETTER_MAX - 1)
                await pipe.execute()

        if entries:
            await self._call(push)

    async def dead_letters(self, service_id: str) -> list[str]:
        raw = await self._call(lambda: self._redis.lrange(dead_letter_key(service_id), 0, -1))
        return [v.decode() for v in raw]

    async def pending_size(self, service_id: str) -> int:
        async def count() -> int:
            ids = await self._redis.zrange(batches_key(service_id), 0, -1)
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hlen(pending_key(service_id))
                for batch_id in ids:
                    pipe.hlen(batch_key(service_id, _text(batch_id)))
                return sum(await pipe.execute())

        return await self._call(count)  # type: ignore[no-any-return]

    async def reserve(self, claims: list[LimitClaim], divisor: int) -> Reservation:
        args: list[Any] = [divisor]
        for c in claims:
            args += [c.base, c.max, c.need, c.ttl]
        out = await self._script("reserve", [c.key for c in claims], args)
        if out[0] == 0:
            return Reservation(denied=int(out[1]), used=int(out[2]), reserved=int(out[3]))
        values = [int(v) for v in out[1:]]
        return Reservation(granted=tuple(values[0::2]), free_after=tuple(values[1::2]))

    async def settle(self, service_id: str, flush_id: str, settlements: list[Settlement]) -> None:
        args: list[Any] = [DEDUP_TTL]
        for s in settlements:
            args += [s.used, s.release, s.ttl, s.extra]
        keys = [done_key(service_id, flush_id), *(s.key for s in settlements)]
        await self._script("settle", keys, args)

    async def raise_used(self, items: list[tuple[str, int, int]]) -> None:
        args: list[Any] = []
        for _, value, ttl in items:
            args += [value, ttl]
        await self._script("raise_used", [key for key, _, _ in items], args)

    async def ping(self) -> bool:
        """Always tries (ignores the breaker): readiness and recovery depend on it."""
        try:
            await self._redis.ping()
        except (RedisError, OSError):
            self._available = False
            self._down_until = self._clock() + self._retry_after
            return False
        self._available = True
        return True

    async def close(self) -> None:
        await self._redis.aclose()
