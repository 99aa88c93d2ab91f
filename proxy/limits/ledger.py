"""This replica's book of limit windows: the allowance it reserved in the shared counters, what it spent of
it, and what it owes back at the next settlement. Pure bookkeeping (no I/O, no asyncio, no clock): the
limiter does the store calls and passes the results and the time in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..store.base import Settlement
from ..threescale.models import UsageReport
from .windows import KEEP_AFTER_WINDOW, counter_ttl


@dataclass(frozen=True, slots=True)
class Claim:
    """A request's need on one limit window (`key` names the shared counter; `base` is 3scale's value)."""

    service_id: str
    key: str
    report: UsageReport
    need: int
    base: int
    start: float
    end: float


@dataclass(slots=True)
class Window:
    """This replica's view of one limit window."""

    service_id: str
    end: float
    allowance: int = 0  # reserved in the store, not yet used here
    used: int = 0  # taken from the allowance since the last settlement
    counted: int = 0  # everything this replica admitted in the window (fallback while the store is down)
    extra: int = 0  # admitted without a reservation (store down): added to the shared count when it is back
    free_seen: int = 0  # headroom nobody had reserved, at our last reservation
    active: bool = False  # used since the last settlement


class Ledger:
    """The windows this replica holds allowances in, keyed by their shared counter's key."""

    def __init__(self, divisor: int, max_windows: int = 1_000_000) -> None:
        self._divisor = divisor
        # A grant is need + free/divisor, which leaves (divisor - 1) times the grant free: a slice counts as
        # near the limit only when the free headroom falls below half of that, so a fresh roomy grant is kept.
        self._tight_factor = max(1, divisor // 2)
        self._max_windows = max(1, max_windows)
        self._windows: dict[str, Window] = {}  # oldest first: the first forgotten when over max_windows

    def __len__(self) -> int:
        return len(self._windows)

    def get(self, key: str) -> Window | None:
        """The window of a counter key, if this replica has one."""
        return self._windows.get(key)

    def allowance(self, key: str) -> int:
        """Units reserved in the shared counter that this replica may still spend without asking."""
        w = self._windows.get(key)
        return w.allowance if w is not None else 0

    def held(self) -> int:
        """All units this replica holds reserved in shared counters (what a settlement may give back)."""
        return sum(w.allowance for w in self._windows.values())

    def _window(self, claim: Claim) -> Window:
        w = self._windows.get(claim.key)
        if w is None:
            w = self._windows[claim.key] = Window(claim.service_id, claim.end)
        return w

    def take(self, claims: Sequence[Claim]) -> bool:
        """All or nothing: spend every claim's need from the local allowances, or change nothing."""
        if len(claims) == 1:  # the common case, without the lists
            c = claims[0]
            w = self._windows.get(c.key)
            if w is None or w.allowance < c.need:
                return False
            w.allowance -= c.need
            w.used += c.need
            w.counted += c.need
            w.active = True
            return True
        windows = [self._windows.get(c.key) for c in claims]
        if any(w is None or w.allowance < c.need for w, c in zip(windows, claims, strict=True)):
            return False
        for w, c in zip(windows, claims, strict=True):
            assert w is not None
            w.allowance -= c.need
            w.used += c.need
            w.counted += c.need
            w.active = True
        return True

    def shortfall(self, claims: Sequence[Claim]) -> list[tuple[Claim, int]]:
        """The claims the local allowances cannot cover, each with how many units it lacks."""
        short = []
        for c in claims:
            have = self.allowance(c.key)
            if have < c.need:
                short.append((c, c.need - have))
        return short

    def others_hold(self, claim: Claim, reserved: int) -> bool:
        """After a denial that found `reserved` units held in the counter: does any other replica hold some?
        This replica's share is its allowance and what it used of it since the last settlement (units stay
        reserved until a settlement makes them used)."""
        w = self._windows.get(claim.key)
        mine = w.allowance + w.used if w is not None else 0
        return reserved - mine > 0

    def grant(self, claim: Claim, granted: int, free_after: int) -> None:
        """The store reserved `granted` units for this replica, leaving `free_after` for anyone."""
        w = self._window(claim)
        w.allowance += granted
        w.free_seen = free_after

    def fits_alone(self, claim: Claim) -> bool:
        """Store down: would 3scale's value plus what this replica admitted plus this need stay in the limit?"""
        w = self._windows.get(claim.key)
        counted = w.counted if w is not None else 0
        return claim.base + counted + claim.need <= claim.report.max_value

    def count_alone(self, claims: Sequence[Claim]) -> None:
        """Store down: admit without a reservation; the units are added to the shared count when it is back."""
        for c in claims:
            w = self._window(c)
            w.counted += c.need
            w.extra += c.need

    def remaining(self, claim: Claim) -> int:
        """What is left of the limit as far as this replica knows (never below 0)."""
        w = self._windows.get(claim.key)
        left = (w.free_seen + w.allowance) if w is not None else claim.report.max_value - claim.base
        return max(0, left)

    def settle(self, now: float, *, release_all: bool = False) -> dict[str, list[Settlement]]:
        """Per service, what to write back: used units become usage; idle, near-limit or ended allowances
        (every allowance with `release_all`) go back; windows long over are forgotten."""
        per_service: dict[str, list[Settlement]] = {}
        for key, w in list(self._windows.items()):
            release = 0
            idle_or_tight = not w.active or w.free_seen < w.allowance * self._tight_factor or now >= w.end
            if w.allowance and (release_all or idle_or_tight):
                release, w.allowance = w.allowance, 0
            if w.used or release or w.extra:
                settlement = Settlement(key, w.used, release, counter_ttl(w.end, now), w.extra)
                per_service.setdefault(w.service_id, []).append(settlement)
            w.used, w.extra, w.active = 0, 0, False
            if now >= w.end + KEEP_AFTER_WINDOW and not w.allowance:
                del self._windows[key]
        self._forget_idle()
        return per_service

    def _forget_idle(self) -> None:
        """Over `max_windows`, forget settled windows that hold nothing, oldest first: a flood of keys must
        not grow memory for a whole month. Only the store-down fallback count of such a window is lost
        (it then starts again from 3scale's value); a window holding an allowance is never dropped."""
        excess = len(self._windows) - self._max_windows
        if excess <= 0:
            return
        idle = [k for k, w in self._windows.items() if not w.allowance][:excess]
        for key in idle:
            del self._windows[key]
