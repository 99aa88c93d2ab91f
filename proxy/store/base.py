"""What the proxy keeps in shared storage, and the key names it uses.

Every key of one service carries the hash tag `{svc:ID}` so the multi-key scripts run on Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from ..decisions import AuthDecision
from ..threescale.models import AppCredentials

KEY_PREFIX = "tsp"
DEAD_LETTER_MAX = 1000
DEDUP_TTL = 900  # seconds a flush id is remembered, so a flush retried after an unknown outcome applies once
DEFAULT_MAX_CONNECTIONS = 64  # one event loop rarely has more Redis calls in flight; see redis_max_connections
MAX_BATCH_FIELDS = 500  # usage fields one batch takes from the pending buffer when the caller names no bound


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


def _key(service_id: str, *parts: str) -> str:
    return ":".join((KEY_PREFIX, service_tag(service_id), *parts))


def auth_key(service_id: str, digest: str) -> str:
    """A cached authorization."""
    return _key(service_id, "auth", digest)


def config_key(origin: str, environment: str) -> str:
    """The last good configuration from a portal (its origin, never its token) for one environment."""
    digest = hashlib.sha256(f"{origin}\x00{environment}".encode()).hexdigest()[:16]
    return f"{KEY_PREFIX}:config:{digest}:{environment}"


def pending_key(service_id: str) -> str:
    """Hash of usage counted and not yet taken for a report: field → delta."""
    return _key(service_id, "pending")


def batches_key(service_id: str) -> str:
    """Sorted set of in-flight batch ids, scored by the time their lease ends."""
    return _key(service_id, "batches")


def owners_key(service_id: str) -> str:
    """Hash of in-flight batch id → the owner token of the replica holding its lease."""
    return _key(service_id, "owners")


def batch_key(service_id: str, batch_id: str) -> str:
    """Hash of one in-flight batch (same fields as pending)."""
    return _key(service_id, "batch", batch_id)


def done_key(service_id: str, flush_id: str) -> str:
    """Marks a flush as applied, so retrying it after an unknown outcome does not count twice."""
    return _key(service_id, "done", flush_id)


def dead_letter_key(service_id: str) -> str:
    """List of JSON entries 3scale would have rejected (newest first, capped)."""
    return _key(service_id, "dead")


def limit_key(service_id: str, digest: str, metric: str, period: str, window_start: float) -> str:
    """Counter of one limit window: fields `u` (used) and `r` (reserved by replicas, not yet used)."""
    return _key(service_id, "lim", digest, metric, period, str(int(window_start)))


# Usage fields are `minute|kind|metric|app`: the app (user_key or app_id) goes last because it may contain `|`.
def usage_field(minute: int, kind: str, metric: str, app: str) -> str:
    """Encode one usage counter's identity as a hash field."""
    return f"{minute}|{kind}|{metric}|{app}"


def parse_usage_field(field: str) -> tuple[int, str, str, str]:
    """Inverse of usage_field: (minute, kind, metric, app)."""
    minute, kind, metric, app = field.split("|", 3)
    return int(minute), kind, metric, app


@dataclass(frozen=True, slots=True)
class Batch:
    """An in-flight batch taken for reporting: its id, `field → delta`, and the owner token of the lease.

    Only the owner may renew or ack it; a takeover after the lease ended gives it a new owner.
    """

    id: str
    fields: dict[str, int]
    owner: str = ""


@dataclass(frozen=True, slots=True)
class LimitClaim:
    """A request's need on one limit window; `base` seeds a new counter with 3scale's current value."""

    key: str
    base: int
    max: int
    need: int
    ttl: int


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to a reservation: all claims granted (with extra headroom), or the first one that cannot be."""

    granted: tuple[int, ...] = ()
    free_after: tuple[int, ...] = ()
    denied: int | None = None
    used: int = 0
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class Settlement:
    """Turn `used` reserved units into usage, give `release` unused ones back, add `extra` unreserved usage."""

    key: str
    used: int
    release: int
    ttl: int
    extra: int = 0


class Store(Protocol):
    """What the proxy needs from shared storage (Redis, or memory for one replica)."""

    @property
    def available(self) -> bool:
        """False after a failure, until a call succeeds again."""
        ...

    @property
    def shared(self) -> bool:
        """True when other replicas see the same data (Redis); False for memory://."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def get_decision(self, key: str) -> AuthDecision | None:
        """A cached authorization at `key`; ValueError (or KeyError/TypeError) when the value is not one."""
        ...

    async def set_decision(self, key: str, decision: AuthDecision, ttl: float) -> None:
        """Cache an authorization for `ttl` seconds (Redis holds its JSON; memory:// the object itself)."""
        ...

    async def add_usage(self, service_id: str, flush_id: str, fields: dict[str, int]) -> None:
        """Add deltas to the pending usage, once per flush_id (a retry of the same flush is a no-op)."""
        ...

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
        """A batch whose lease expired (a dead replica's), else up to `max_fields` pending fields as a new
        batch, else None. Either way the lease runs to `now + lease` and belongs to `owner` (default new_id)."""
        ...

    async def ack(self, service_id: str, batch_id: str, owner: str, fields: list[str]) -> bool:
        """Forget fields 3scale accepted (the batch is gone once empty); False, and nothing forgotten, when
        `owner` no longer holds the lease (another replica took the batch over)."""
        ...

    async def renew(self, service_id: str, batch_id: str, owner: str, until: float) -> bool:
        """Move the lease end to `until` if `owner` still holds it; False when it does not (or it is gone)."""
        ...

    async def dead_letter(self, service_id: str, entries: list[str]) -> None: ...

    async def dead_letters(self, service_id: str) -> list[str]: ...

    async def pending_size(self, service_id: str) -> int:
        """Usage fields waiting (pending plus in flight), for the pending-usage gauge."""
        ...

    async def reserve(self, claims: list[LimitClaim], divisor: int) -> Reservation:
        """All or nothing: reserve each claim's need plus up to (free − need) / divisor of headroom."""
        ...

    async def settle(self, service_id: str, flush_id: str, settlements: list[Settlement]) -> None:
        """Apply settlements once per flush_id."""
        ...

    async def raise_used(self, items: list[tuple[str, int, int]]) -> None:
        """For (key, value, ttl): used = max(used, value): 3scale saw usage from elsewhere."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
