"""wrk: its command line, the Lua scripts of the cases, and the parser of its `--latency` output.

`parse_output` is pure (tests/unit/test_bench_parsing.py). wrk prints times as `%.2f` plus us/ms/s/m/h,
sizes in binary units (`40.00MB` = 40 × 1024² bytes) and counts plainly; errors appear only when there were
some (`Socket errors: connect 0, read 3, write 0, timeout 1`, `Non-2xx or 3xx responses: 12`). Lines a script
writes as `bench: key=value ...` are collected in `WrkResult.script`.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "PB": 1024**5}
_NUMBER_UNIT = re.compile(r"^([0-9]*\.?[0-9]+)([a-zA-Z]*)$")


def parse_time(text: str) -> float:
    """`312.50us`, `1.20ms`, `2.00s`, `1.50m` → seconds."""
    m = _NUMBER_UNIT.match(text.strip())
    if not m or m.group(2) not in TIME_UNITS:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * TIME_UNITS[m.group(2)]


def parse_size(text: str) -> int:
    """`101.74KB`, `1.23GB`, `512.00B` → bytes (wrk's units are binary)."""
    m = _NUMBER_UNIT.match(text.strip())
    if not m or m.group(2) not in SIZE_UNITS:
        raise ValueError(f"not a wrk size: {text!r}")
    return round(float(m.group(1)) * SIZE_UNITS[m.group(2)])


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    bytes_read: int
    rps: float
    latency_ms: dict[str, float]  # "avg", "50", "75", "90", "99"
    socket_errors: dict[str, int] = field(default_factory=dict)  # connect, read, write, timeout
    non_2xx: int = 0
    script: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx


def parse_output(text: str) -> WrkResult:
    """The summary wrk prints with `--latency`; ValueError when there is none (wrk failed to run)."""
    m = re.search(r"^\s*(\d+) requests in ([0-9.]+[a-z]+), ([0-9.]+[A-Z]*B) read", text, re.M)
    if not m:
        raise ValueError("no 'N requests in T, S read' line in wrk output:\n" + text)
    requests, duration, size = int(m.group(1)), parse_time(m.group(2)), parse_size(m.group(3))
    rps_m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    rps = float(rps_m.group(1)) if rps_m else (requests / duration if duration else 0.0)
    latency: dict[str, float] = {}
    avg = re.search(r"^\s*Latency\s+([0-9.]+[a-z]+)", text, re.M)
    if avg:
        latency["avg"] = parse_time(avg.group(1)) * 1000
    for pct, value in re.findall(r"^\s*(50|75|90|99)(?:\.0+)?%\s+([0-9.]+[a-z]+)\s*$", text, re.M):
        latency[pct] = parse_time(value) * 1000
    errors: dict[str, int] = {}
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if se:
        errors = dict(zip(("connect", "read", "write", "timeout"), (int(g) for g in se.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    script: dict[str, str] = {}
    for line in re.findall(r"^bench: (.*)$", text, re.M):
        for pair in line.split():
            key, _, value = pair.partition("=")
            script[key] = value
    return WrkResult(
        requests=requests,
        duration_s=duration,
        bytes_read=size,
        rps=rps,
        latency_ms=latency,
        socket_errors=errors,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        script=script,
    )


# ------------------------------------------------------------------------------------------- scripts

_CLOCK = """
local ffi = require("ffi")
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
           int clock_gettime(int clk, bench_timespec *ts); ]]
local ts = ffi.new("bench_timespec")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
"""


def upload_script(body_bytes: int) -> str:
    """POST a body of `body_bytes` on every request (wrk adds Content-Length)."""
    return (
        'wrk.method = "POST"\n'
        f'wrk.body = string.rep("x", {body_bytes})\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    )


def distinct_keys_script(prefix: str, want: int, spare: int, header: str = "x-api-key") -> str:
    """Every request with a key of its own (`prefix` + 8 digits, from 1); after `want` responses the thread
    stops and writes `bench: done=N elapsed=S` (S from the first request, CLOCK_MONOTONIC through LuaJIT's
    ffi), because wrk itself always reports its whole `-d`. `spare` keys cover requests still in flight."""
    return (
        _CLOCK
        + f"""
local sent, got, started = 0, 0, nil
local limit = {want + spare}
function request()
  if started == nil then started = now() end
  sent = sent + 1
  if sent > limit then sent = 1 end
  return wrk.format(nil, nil, {{["{header}"] = string.format("{prefix}%08d", sent)}}, nil)
end
function response(status, headers, body)
  got = got + 1
  if got == {want} then
    io.write(string.format("bench: done=%d elapsed=%.6f\\n", got, now() - started))
    io.flush()
    wrk.thread:stop()
  end
end
"""
    )


def distinct_key(prefix: str, i: int) -> str:
    """The key `distinct_keys_script` sends as its i-th request (1-based)."""
    return f"{prefix}{i:08d}"


# ------------------------------------------------------------------------------------------- running


def command(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    headers: Sequence[str] = (),
    script: str | None = None,
    cpus: str | None = None,
    timeout_s: float = 5.0,
) -> list[str]:
    cmd = ["taskset", "-c", cpus] if cpus else []
    cmd += ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s"]
    cmd += ["--latency"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", script]
    return [*cmd, url]


def run(
    cmd: Sequence[str],
    *,
    register: Callable[[subprocess.Popen[bytes]], None],
    stop_when: str | None = None,
    grace_s: float = 30.0,
) -> tuple[str, str]:
    """Run wrk and return (stdout, stderr). With `stop_when`, wrk gets SIGINT (it stops and prints its
    summary) as soon as that text appears on its stdout. `register` hands the process to whoever kills
    children on exit."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, start_new_session=True, env=clean_env()
    )
    register(proc)
    assert proc.stdout is not None and proc.stderr is not None
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    out_fd = proc.stdout.fileno()
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    signalled = False
    needle = stop_when.encode() if stop_when else None
    while sel.get_map():
        for key, _ in sel.select(timeout=1.0):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fd)
                continue
            chunks[key.fd].append(data)
            if needle and not signalled and key.fd == out_fd and needle in b"".join(chunks[out_fd]):
                proc.send_signal(signal.SIGINT)
                signalled = True
    sel.close()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    err_fd = proc.stderr.fileno()
    out, err = (b"".join(chunks[fd]).decode("utf-8", "replace") for fd in (out_fd, err_fd))
    proc.stdout.close()
    proc.stderr.close()
    return out, err


def clean_env() -> dict[str, str]:
    """The environment without HTTP proxy settings: every request here goes to 127.0.0.1 directly."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
