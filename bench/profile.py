"""`make profile` (`python -m bench.profile`): where threescale-proxy spends its CPU on the cached path.

The same setup as `python -m bench` (bench/targets.py): the proxy pinned to core 0, the upstream nginx, the
3scale emulator and wrk (32 connections, the warmed key) on core 1, py-spy on core 1 as well. Under that
load py-spy samples the proxy's process tree (`--subprocesses`, so workers too) twice in a row for
`--seconds` each: a flame graph (SVG) and the raw collapsed stacks, from which the top 25 functions by self
time are printed and saved as text. py-spy pauses the process for each sample, so throughput while
profiling is lower than in `make bench`.

Output: bench/results/profile-<UTC time>.svg, .collapsed.txt and .top.txt.
Run: `make profile PROFILE_ARGS="--seconds 10"`, or `python -m bench.profile --help`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import cpu, targets, wrk
from bench.targets import KEY, Children

RESULTS = Path(__file__).resolve().parent / "results"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
EVENT_LOOP = "Runner.run (asyncio/runners.py"
"""The frame every stack of the event loop's thread has, on asyncio's loop and on uvloop (whose loop is C,
so its stacks go from asyncio.Runner straight to our callbacks): the stacks that serve requests."""
_FRAME_LINE = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::\d+)?\)$")


def self_time(collapsed: str, through: str | None = None, *, invert: bool = False) -> tuple[Counter[str], int]:
    """Collapsed stacks (`frame;frame;leaf COUNT` per line) → samples per leaf function, and the total.
    A frame `handle (proxy/pipeline.py:120)` counts as `handle (proxy/pipeline.py)`: lines of one function
    add up. With `through`, only stacks with a frame containing it (with `invert`, only the others)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        m = _LINE.match(line.strip())
        if not m:
            continue
        stack = m.group("stack")
        if through is not None and (through in stack) == invert:
            continue
        n = int(m.group("count"))
        leaf = stack.rsplit(";", 1)[-1].strip()
        f = _FRAME_LINE.match(leaf)
        counts[f"{f.group('func')} ({f.group('file')})" if f else leaf] += n
        total += n
    return counts, total


def format_top(counts: Counter[str], total: int, n: int = 25) -> str:
    lines = [f"{'self %':>7} {'samples':>8}  function (file)"]
    for name, samples in counts.most_common(n):
        lines.append(f"{samples * 100 / total if total else 0:>6.1f}% {samples:>8}  {name}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=int, default=10, help="seconds per py-spy recording (two of them)")
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--redis", metavar="URL|local", help="redis_url for the proxy (default memory://)")
    p.add_argument("--proxy-set", action="append", default=[], metavar="KEY=VALUE", help="as in python -m bench")
    p.add_argument("--proxy-src", type=Path, metavar="DIR", help="run the proxy from this checkout")
    return p.parse_args(argv)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/python -m pip install py-spy (or `make profile`)")
    return found


def record(pid: int, out: Path, fmt: str, seconds: int, rate: int) -> None:
    cmd = ["taskset", "-c", "1", py_spy(), "record", "--pid", str(pid), "--duration", str(seconds)]
    cmd += ["--rate", str(rate), "--subprocesses", "--format", fmt, "--output", str(out)]
    print("$ " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    py_spy()  # fail early when it is missing
    for name in ("wrk", "nginx", "taskset"):
        targets.tool(name)
    src = (args.proxy_src or targets.REPO).resolve()
    targets.check_proxy_source(src)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    RESULTS.mkdir(exist_ok=True)
    base = RESULTS / f"profile-{stamp}"
    svg, raw, top = (base.with_suffix(s) for s in (".svg", ".collapsed.txt", ".top.txt"))
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    split = (0, 0)  # the proxy's (user, system) ticks over the two recordings
    with tempfile.TemporaryDirectory(prefix="tsp-profile-") as tmp, Children() as children:
        work = Path(tmp)
        work.chmod(0o755)
        try:
            redis_url = args.redis or "memory://"
            if args.redis == "local":
                _, redis_url = targets.start_redis(children, work, "1")
            backend = targets.start_nginx_upstream(children, work, "backend", "1")
            emulator = targets.start_emulator(children, work, 0, "1")
            cfg = targets.proxy_config(
                port=targets.free_port(),
                metrics_port=targets.free_port(),
                redis_url=redis_url,
                backend_url=f"http://127.0.0.1:{emulator.port}",
                upstream_port=backend.port,
            )
            for text in args.proxy_set:
                _, key, value = targets.parse_assignment(text)
                targets.set_dotted(cfg, key, value)
            proxy = targets.start_threescale(children, work, "threescale", src=src, cfg=cfg, cpus="0")
            load_seconds = 2 * args.seconds + 10
            cmd = wrk.command(
                f"http://127.0.0.1:{proxy.port}/",
                seconds=load_seconds,
                connections=args.connections,
                headers=[f"x-api-key: {KEY}"],
                cpus="1",
            )
            procs: list[subprocess.Popen[bytes]] = []
            output: dict[str, Any] = {}

            def register(proc: subprocess.Popen[bytes]) -> None:
                procs.append(proc)
                children.register(proc)

            def load() -> None:
                output["out"], output["err"] = wrk.run(cmd, register=register)

            print(f"load: {' '.join(cmd[3:])}", flush=True)
            loader = threading.Thread(target=load, daemon=True)
            loader.start()
            threading.Event().wait(1.0)  # let wrk connect
            user0, system0 = cpu.tree_user_system(cpu.read_all_stats(), proxy.pid)
            record(proxy.pid, svg, "flamegraph", args.seconds, args.rate)
            record(proxy.pid, raw, "raw", args.seconds, args.rate)
            user1, system1 = cpu.tree_user_system(cpu.read_all_stats(), proxy.pid)
            split = (user1 - user0, system1 - system0)
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
            loader.join(timeout=30)
        except KeyboardInterrupt:
            print("interrupted: stopping every process", file=sys.stderr)
            return 130
    try:
        res = wrk.parse_output(output.get("out", ""))
        print(f"under py-spy: {res.rps:,.0f} rps, {res.errors} errors (sampling pauses the proxy)")
    except ValueError:
        print(f"wrk: {output.get('err', '').strip()}")
    collapsed = raw.read_text()
    _, every = self_time(collapsed)
    counts, total = self_time(collapsed, EVENT_LOOP)
    others, rest = self_time(collapsed, EVENT_LOOP, invert=True)
    text = ""
    if sum(split):
        # py-spy stops the process (ptrace) for each sample and the stops land on system calls more often
        # than elsewhere, so frames that make one (transport.write, _read_ready) get more samples than
        # their share; /proc has the real split.
        user_share = split[0] / sum(split)
        text += (
            f"CPU while sampled (/proc): user {user_share:.0%}, system {1 - user_share:.0%}. py-spy's samples "
            "overstate frames that make system calls (send/recv): compare them with the system share.\n\n"
        )
    text += f"top 25 functions by self time in the event loop ({total} of {every} samples):\n"
    text += format_top(counts, total)
    if rest:
        # threads outside the loop (the log writer waiting in queue.get looks busy to py-spy)
        text += f"\n\nother threads: {rest} samples, mostly:\n" + format_top(others, rest, 5)
    top.write_text(text + "\n")
    print("\n" + text)
    for path in (svg, raw, top):
        print(f"wrote {path.relative_to(targets.REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
