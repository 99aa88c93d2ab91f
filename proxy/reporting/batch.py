"""A batch's usage fields as 3scale transactions: grouped per (minute, application), split, chunked. Pure.

The buffer holds one field per (minute, kind, metric, app); 3scale takes one transaction per application
and timestamp with a usage map, so fields are grouped, and every transaction remembers the fields behind it
so exactly those are forgotten once 3scale accepts it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..store import parse_usage_field
from ..threescale.models import AppCredentials, Transaction

MAX_AGE = 86400 - 600  # 3scale refuses timestamps older than 24 h; keep a margin for clock skew

App = tuple[str, str]  # (kind, app): kind is user_key or app_id
TxKey = tuple[int, str, str]  # (minute, kind, app)
Rejections = dict[str, str]  # metric → why 3scale would reject it, or "*" → why it rejects the whole app


@dataclass(frozen=True, slots=True)
class Pending:
    """One transaction to send: its key, metric → delta, and the buffer fields it came from."""

    key: TxKey
    usage: dict[str, int]
    fields: list[str]


@dataclass(frozen=True, slots=True)
class Dead:
    """Usage 3scale would reject (dead-lettered instead of sent), with the reason."""

    key: TxKey
    usage: dict[str, int]
    reason: str
    fields: list[str]


@dataclass(slots=True)
class Grouped:
    """A batch's fields per transaction; `empty` are fields with nothing to report (forgotten at once)."""

    usage: dict[TxKey, dict[str, int]] = field(default_factory=dict)
    fields: dict[TxKey, list[str]] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)

    def apps(self) -> dict[App, list[str]]:
        """Each application in the batch with the metrics it reports (sorted): what to re-authorize."""
        apps: dict[App, set[str]] = {}
        for (_, kind, app), usage in self.usage.items():
            apps.setdefault((kind, app), set()).update(usage)
        return {app: sorted(metrics) for app, metrics in sorted(apps.items())}

    def split(self, rejected: Mapping[App, Rejections]) -> tuple[list[Pending], list[Dead]]:
        """What to send and what to dead-letter, given what 3scale would now reject."""
        send, dead = [], []
        for key, usage in self.usage.items():
            bad = rejected.get((key[1], key[2]), {})
            names = self.fields[key]
            gone = {m: n for m, n in usage.items() if "*" in bad or m in bad}
            if gone:
                reason = bad.get("*") or ",".join(sorted({bad[m] for m in gone}))
                dead.append(Dead(key, gone, reason, [f for f in names if parse_usage_field(f)[2] in gone]))
            good = {m: n for m, n in usage.items() if m not in gone}
            if good:
                send.append(Pending(key, good, [f for f in names if parse_usage_field(f)[2] in good]))
        return send, dead


def group(fields: Mapping[str, int]) -> Grouped:
    """Group buffer fields (`minute|kind|metric|app` → delta) into transactions."""
    grouped = Grouped()
    for name, delta in fields.items():
        if delta <= 0:
            grouped.empty.append(name)
            continue
        minute, kind, metric, app = parse_usage_field(name)
        key = (minute, kind, app)
        grouped.usage.setdefault(key, {})[metric] = delta
        grouped.fields.setdefault(key, []).append(name)
    return grouped


def credentials(kind: str, app: str) -> AppCredentials:
    """The credentials a buffer field names (an app_id is reported without its key, as 3scale allows)."""
    return AppCredentials(user_key=app) if kind == "user_key" else AppCredentials(app_id=app)


def transaction(pending: Pending, now: float) -> tuple[Transaction, bool]:
    """The 3scale transaction, timestamped at its minute; True when that is too old for 3scale and it is
    sent as `now` instead (counted: 3scale would otherwise drop the whole POST)."""
    minute, kind, app = pending.key
    stamp = float(minute * 60)
    late = now - stamp > MAX_AGE
    if late:
        stamp = float(int(now))
    return Transaction(credentials(kind, app), pending.usage, timestamp=datetime.fromtimestamp(stamp, UTC)), late
