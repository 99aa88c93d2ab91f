"""`event_loop`: which asyncio event loop a proxy process runs on.

uvloop (libuv, in C) runs the same protocols and transports with less CPU per callback and per socket
call than asyncio's selector loop in Python. `auto` takes it when it is installed (it is a dependency on
Linux) and asyncio's own loop otherwise; `asyncio` forces the standard loop (to rule uvloop out when
debugging).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


def uvloop_available() -> bool:
    """Whether uvloop can be imported here (it has no build for Windows)."""
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: EventLoopChoice) -> Literal["asyncio", "uvloop"]:
    """The loop `choice` means on this machine (`auto`: uvloop when available)."""
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return choice


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new event loop of the chosen kind."""
    if resolve(choice) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def running_loop_kind() -> str:
    """What the running loop is, "uvloop" or "asyncio" (for the ready log line)."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice) -> T:
    """asyncio.run(main) on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)
