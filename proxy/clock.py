"""The one clock every part reads (wall-clock epoch seconds): the composition root injects it, so tests
advance time instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Returns the current time as epoch seconds (what 3scale's periods and shared leases are measured in)."""

system_clock: Clock = time.time
