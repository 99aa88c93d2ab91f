"""The 3scale Service Management API emulator (apisonator's side of the protocol) for `demo` and tests.

A subpackage that imports nothing else from `proxy`, so it can cross-check `proxy.threescale` honestly:
`server` (the aiohttp app, faults, records, control API), `protocol` (decisions and XML), `state` (services,
plans, applications, counters), `params` (Rack-style parameter parsing). See `server` for the config shape.
"""

from .server import Emulator, RecordedCall, main

__all__ = ["Emulator", "RecordedCall", "main"]
