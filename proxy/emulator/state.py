"""The 3scale emulator's model: services, plans, applications (from its config) and usage counters.

Part of `proxy.emulator`. Counters are kept per period window aligned to UTC, as apisonator's
stats keys are, so a report with an old timestamp lands in the window it belongs to.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

PERIODS: tuple[str, ...] = ("eternity", "year", "month", "week", "day", "hour", "minute")
"""Longest first: the order of usage_reports within a metric, and the tie-break of limit headers."""

APP_STATES = ("active", "suspended")


@dataclass(frozen=True)
class Usage:
    """One usage value: `N` adds N, `#N` sets the counter to N (deprecated, but still spoken)."""

    value: int
    is_set: bool = False

    def apply_to(self, current: int) -> int:
        """apisonator's `Usage.get_from`: the counter after this usage."""
        return self.value if self.is_set else current + self.value

    def render(self) -> int | str:
        """How the transaction said it: an int, or `"#N"` for a set."""
        return f"#{self.value}" if self.is_set else self.value


@dataclass(frozen=True)
class Limit:
    """One usage limit of a plan: at most `max_value` of `metric` per `period`."""

    metric: str
    period: str
    max_value: int


@dataclass(frozen=True)
class Plan:
    """An application plan: its display name and its limits, in report order."""

    name: str
    limits: tuple[Limit, ...] = ()


@dataclass
class App:
    """An application: v1 apps are named by `user_key`, v2/oauth apps by `app_id` (+ `app_keys`)."""

    plan: Plan
    app_id: str | None = None
    user_key: str | None = None
    keys: list[str] = field(default_factory=list)
    state: str = "active"
    redirect_url: str = ""

    @property
    def ident(self) -> str:
        """The name counters and the `reported` list use: the app_id, else the user_key."""
        return self.app_id if self.app_id is not None else (self.user_key or "")


@dataclass
class Service:
    """A 3scale service: credentials, metric hierarchy, plans and applications."""

    id: str
    token: str | None
    provider_key: str | None
    backend_version: str
    state: str
    metrics: dict[str, str | None]
    plans: dict[str, Plan]
    apps: list[App]

    def by_app_id(self, app_id: str) -> App | None:
        """The application with this app_id."""
        return next((app for app in self.apps if app.app_id == app_id), None)

    def by_user_key(self, user_key: str) -> App | None:
        """The application with this user_key."""
        return next((app for app in self.apps if app.user_key == user_key), None)

    def resolve(self, name: str) -> App | None:
        """An application named by either of its identifiers (for the Python and control APIs)."""
        return self.by_app_id(name) or self.by_user_key(name)

    def ancestors(self, metric: str) -> list[str]:
        """Parent, grandparent, …: the metrics a usage of `metric` also counts towards."""
        chain: list[str] = []
        parent = self.metrics.get(metric)
        while parent is not None and parent not in chain:
            chain.append(parent)
            parent = self.metrics.get(parent)
        return chain

    def children(self, metric: str) -> list[str]:
        """Direct children, in config order (the `<hierarchy>` extension lists only these)."""
        return [name for name, parent in self.metrics.items() if parent == metric]

    def descendants(self, metric: str) -> list[str]:
        """All metrics below `metric`, depth first."""
        found: list[str] = []
        for child in self.children(metric):
            found.append(child)
            found.extend(self.descendants(child))
        return found


class ConfigError(ValueError):
    """A config mistake, with the path of the offending key in the message."""


def load_services(config: Mapping[str, Any]) -> dict[str, Service]:
    """Build the services from the emulator's config dict (see `proxy.emulator` for its shape)."""
    services: dict[str, Service] = {}
    for index, raw in enumerate(_seq(config.get("services"), "services")):
        service = _service(raw, f"services[{index}]")
        services[service.id] = service
    return services


def _service(raw: Any, where: str) -> Service:
    """One service entry."""
    raw = _map(raw, where)
    if raw.get("id") in (None, ""):
        raise ConfigError(f"{where}.id: required")
    version = str(raw.get("backend_version", 1))
    if version not in ("1", "2", "oauth"):
        raise ConfigError(f"{where}.backend_version: must be 1, 2 or oauth, not {version!r}")
    metrics = _metrics(raw.get("metrics"), f"{where}.metrics")
    plans = {
        str(name): _plan(str(name), spec, metrics, f"{where}.plans.{name}")
        for name, spec in _map(raw.get("plans"), f"{where}.plans").items()
    }
    service = Service(
        id=str(raw["id"]),
        token=_opt_str(raw.get("token")),
        provider_key=_opt_str(raw.get("provider_key")),
        backend_version=version,
        state=str(raw.get("state", "active")),
        metrics=metrics,
        plans=plans,
        apps=[],
    )
    for index, spec in enumerate(_seq(raw.get("applications"), f"{where}.applications")):
        service.apps.append(make_app(service, spec, f"{where}.applications[{index}]"))
    return service


def _metrics(raw: Any, where: str) -> dict[str, str | None]:
    """`{name: {parent: other}}` → `{name: parent}`: exactly those, as apisonator knows no implicit metric;
    a service that lists none has `hits` (porta creates it with every service)."""
    if raw is None:
        return {"hits": None}
    metrics: dict[str, str | None] = {}
    for name, spec in _map(raw, where).items():
        metrics[str(name)] = _opt_str(_map(spec, f"{where}.{name}").get("parent"))
    for name, parent in metrics.items():
        if parent is not None and parent not in metrics:
            raise ConfigError(f"{where}.{name}.parent: unknown metric {parent!r}")
    return metrics


def _plan(name: str, raw: Any, metrics: Mapping[str, str | None], where: str) -> Plan:
    """A plan; limits are ordered by metric (config order) and, within a metric, longest period first."""
    raw = _map(raw, where)
    limits: list[Limit] = []
    for metric, periods in _map(raw.get("limits"), f"{where}.limits").items():
        if metric not in metrics:
            raise ConfigError(f"{where}.limits.{metric}: unknown metric")
        periods = _map(periods, f"{where}.limits.{metric}")
        for period in periods:
            if period not in PERIODS:
                raise ConfigError(f"{where}.limits.{metric}.{period}: unknown period")
        limits.extend(Limit(str(metric), p, int(periods[p])) for p in PERIODS if p in periods)
    return Plan(name=str(raw.get("name", name)), limits=tuple(limits))


def make_app(service: Service, raw: Any, where: str = "application") -> App:
    """An application from its spec: `{user_key|app_id, app_keys, plan, state, redirect_url}`."""
    raw = _map(raw, where)
    app_id, user_key = _opt_str(raw.get("app_id")), _opt_str(raw.get("user_key"))
    if (app_id is None) == (user_key is None):
        raise ConfigError(f"{where}: exactly one of app_id or user_key is required")
    plan_name = str(raw.get("plan", ""))
    if plan_name not in service.plans:
        raise ConfigError(f"{where}.plan: unknown plan {plan_name!r}")
    state = str(raw.get("state", "active"))
    if state not in APP_STATES:
        raise ConfigError(f"{where}.state: must be one of {', '.join(APP_STATES)}")
    keys = [str(k) for k in _seq(raw.get("app_keys"), f"{where}.app_keys")]
    return App(
        plan=service.plans[plan_name],
        app_id=app_id,
        user_key=user_key,
        keys=keys,
        state=state,
        redirect_url=str(raw.get("redirect_url", "")),
    )


def _map(raw: Any, where: str) -> Mapping[str, Any]:
    """A mapping, or an empty one for a missing/empty YAML value."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping")
    return raw


def _seq(raw: Any, where: str) -> list[Any]:
    """A list, or an empty one for a missing value."""
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where}: expected a list")
    return list(raw)


def _opt_str(raw: Any) -> str | None:
    """A string, with None and '' meaning absent."""
    return None if raw is None or raw == "" else str(raw)


def window(period: str, at: float) -> tuple[datetime | None, datetime | None]:
    """The UTC-aligned window of `period` containing `at` (weeks start Monday); eternity has none."""
    moment = datetime.fromtimestamp(at, UTC)
    if period == "eternity":
        return None, None
    if period == "minute":
        start = moment.replace(second=0, microsecond=0)
        return start, start + timedelta(minutes=1)
    if period == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        return start, start + timedelta(hours=1)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(weeks=1)
    if period == "month":
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + timedelta(days=days)
    if period == "year":
        start = day.replace(month=1, day=1)
        return start, start.replace(year=start.year + 1)
    raise ValueError(f"unknown period {period!r}")


_PRUNED_PERIODS = {"minute": 60, "hour": 3600, "day": 86400}
"""Window lengths of the periods whose old windows are dropped (longer ones add one window a week or more)."""
KEEP_ENDED = 86400 + 3600
"""Seconds a window is kept after it ended: 3scale refuses reports older than 24 h, plus a margin."""


class Counters:
    """Usage counters per (service, app, metric, period, window start), all in memory.

    Minute, hour and day windows that ended more than `KEEP_ENDED` before the newest usage are dropped, so a
    long `demo` keeps about a day of windows instead of every minute it ever ran."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str, str, int], int] = {}
        self._newest = 0.0
        self._pruned_at = 0.0

    def __len__(self) -> int:
        return len(self._values)

    @staticmethod
    def _key(service_id: str, app: str, metric: str, period: str, at: float) -> tuple[str, str, str, str, int]:
        start, _ = window(period, at)
        return service_id, app, metric, period, int(start.timestamp()) if start else 0

    def get(self, service_id: str, app: str, metric: str, period: str, at: float) -> int:
        """The counter of the window of `period` that contains `at`."""
        return self._values.get(self._key(service_id, app, metric, period, at), 0)

    def apply(self, service_id: str, app: str, usage: Mapping[str, Usage], at: float) -> None:
        """Add (or set) a processed usage in every period's window that contains `at`."""
        for metric, value in usage.items():
            for period in PERIODS:
                key = self._key(service_id, app, metric, period, at)
                self._values[key] = value.apply_to(self._values.get(key, 0))
        self._newest = max(self._newest, at)
        if self._newest - self._pruned_at >= 60:
            self._prune()

    def _prune(self) -> None:
        """Drop the short windows that ended too long ago to receive a report (at most once a minute)."""
        self._pruned_at = self._newest
        horizon = self._newest - KEEP_ENDED
        old = [key for key in self._values if key[3] in _PRUNED_PERIODS and key[4] + _PRUNED_PERIODS[key[3]] < horizon]
        for key in old:
            del self._values[key]

    def clear(self) -> None:
        """Forget every counter."""
        self._values.clear()
        self._newest = self._pruned_at = 0.0


def stored_values(counters: Counters, service_id: str, app: App, at: float) -> dict[tuple[str, str], int]:
    """The stored counter of every limit of the app's plan: `{(metric, period): value}`."""
    return {
        (lim.metric, lim.period): counters.get(service_id, app.ident, lim.metric, lim.period, at)
        for lim in app.plan.limits
    }
