"""`make bench` (`python -m bench`): threescale-proxy against nginx and haproxy on this machine, with wrk.

Targets, all in front of one nginx upstream:
  upstream    wrk → nginx upstream                       (the ceiling: no proxy)
  nginx       wrk → nginx reverse proxy → upstream        (1 worker, keep-alive pool, HTTP/1.1 upstream)
  haproxy     wrk → haproxy → upstream                    (1 thread, http mode, keep-alive)
  threescale  wrk → threescale-proxy → upstream           (`python -m proxy serve`, the emulator as 3scale)
  threescale@NAME   the same from another checkout (`--proxy-src NAME=DIR`, e.g. a `git worktree`)
Every target gets the same requests, `x-api-key` included. Configurations: bench/targets.py.

Cases:
  cached-32, cached-256   GET / with the one warmed key, 32 and 256 connections
  miss                    threescale only: every request a key of its own, 10,000 keys the emulator knows,
                          on a fresh proxy each round (its Redis database flushed), so every key misses
                          once; its report interval is an hour, so the first report's 10,000
                          re-authorizations do not land in the run. Bounded by the emulator.
  large-response          GET /big: a 1 MiB file, 32 connections (MB/s)
  large-upload            POST /upload with a 1 MiB body, 32 connections (MB/s); before the rounds one
                          POST per target is checked in the upstream's log to have arrived whole
  workers                 with --redis only: threescale with workers=1 and workers=2, 256 connections
Each case runs at most `--seconds` (the miss case ends after 10,000 responses).

Pinning. Core 0 holds only the server under test: the nginx proxy, haproxy, threescale-proxy (and its
process tree), and for the `upstream` target an nginx upstream of its own, so the ceiling is measured on
the same core. Core 1 holds the load side: wrk (1 thread), the upstream nginx the proxies forward to, the
3scale emulator and a `--redis local` redis-server. The upstream's work per request is the same behind
every proxy, so it sits with the load generator rather than in the measured core (as in issue 8: each
server pinned to one core, wrk on the other). The catch: for the fastest targets core 1 can saturate
first; each run records both cores' busy share and the table says when wrk's core was ≥ 95 % busy (the
figure is then a lower bound). The `workers` case pins nothing to one core: the proxy, wrk (2 threads)
and an upstream nginx with 2 workers all share cores 0 and 1, since one worker per core is the point.

Measured per run: rps and p50/p99 (wrk --latency), errors (socket errors and non-2xx; a target with any is
flagged), CPU µs per request (utime+stime of the server's process tree from /proc/<pid>/stat, before and
after the run, over the requests), MB/s for the 1 MiB cases. Rounds are paired: every round runs each
case on every target, in alternating order (ABCD, DCBA, ...); the table has medians over rounds and
ratios of medians against nginx. Results: bench/results/<UTC time>-<git sha>.json and latest.json.
Traffic goes to 127.0.0.1 only; every process started is killed on exit.

Run: `make bench BENCH_ARGS="--rounds 3 --seconds 5"`, or `python -m bench --help`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench import cpu, report, targets, wrk
from bench.machine import git_info, machine_info
from bench.targets import BIG_BYTES, KEY, MISS_PREFIX, SMALL_BODY, Children, Server, StartError

RESULTS = Path(__file__).resolve().parent / "results"
MISS_KEYS = 10_000
MISS_SPARE = 1_024  # keys beyond 10,000 for the requests still in flight when the thread stops
SERVER_CPUS = "0"
CLIENT_CPUS = "1"
BOTH_CPUS = "0,1"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # cached | miss | large-response | large-upload | workers
    connections: int
    path: str = "/"
    body_bytes: int = 0  # response (large-response) or request (large-upload) body: MB/s = rps × this


CASES = [
    Case("cached-32", "cached", 32),
    Case("cached-256", "cached", 256),
    Case("miss", "miss", 32),
    Case("large-response", "large-response", 32, "/big", BIG_BYTES),
    Case("large-upload", "large-upload", 32, "/upload", BIG_BYTES),
    Case("workers", "workers", 256),
]


@dataclass
class Target:
    name: str
    kind: str  # upstream | nginx | haproxy | threescale
    src: Path | None = None
    workers: int | None = None  # the workers case's variants
    proxy_set: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.name.split("/", 1)[0]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3, help="paired rounds (default 3)")
    p.add_argument("--seconds", type=float, default=5, help="seconds per case and target, at most 10 (default 5)")
    p.add_argument("--warmup", type=float, default=1, help="seconds of unrecorded load per target and case first")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAMES",
        help="comma-separated cases and/or targets (globs): e.g. cached-32,threescale,nginx",
    )
    p.add_argument(
        "--redis",
        metavar="URL|local",
        help="redis_url for the proxy (default memory://); `local` starts a redis-server on core 1. "
        "A given URL's database and the next one (the miss case's) are flushed",
    )
    p.add_argument(
        "--proxy-set",
        action="append",
        default=[],
        metavar="[TARGET:]KEY=VALUE",
        help="set a dotted key in the proxy YAML (value read as YAML), e.g. upstream.transport=h1, "
        "log.access_log=true, threescale@base:workers=1; repeatable",
    )
    p.add_argument(
        "--proxy-src",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="also run the proxy from this checkout as target threescale@NAME (NAME: the directory's name)",
    )
    p.add_argument("--compare", type=Path, metavar="FILE", help="print this run's ratios against a saved JSON")
    p.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = p.parse_args(argv)
    if not 1 <= args.seconds <= 10:
        p.error("--seconds must be between 1 and 10")
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def build_targets(args: argparse.Namespace) -> tuple[list[Target], list[Target]]:
    """(the targets of every case but `workers`, the workers case's variants)."""
    primary = [Target("upstream", "upstream"), Target("nginx", "nginx"), Target("haproxy", "haproxy")]
    primary.append(Target("threescale", "threescale", targets.REPO))
    for spec in args.proxy_src:
        name, sep, raw = spec.partition("=")
        src = Path(raw if sep else spec).expanduser().resolve()
        label = name if sep else src.name
        if not (src / "proxy" / "__init__.py").exists():
            raise SystemExit(f"--proxy-src {spec}: {src} has no proxy/ package")
        primary.append(Target(f"threescale@{label}", "threescale", src))
    variants = [Target(f"threescale/w{n}", "threescale", targets.REPO, workers=n) for n in (1, 2)]
    for text in args.proxy_set:
        try:
            only, key, value = targets.parse_assignment(text)
        except ValueError as exc:
            raise SystemExit(f"--proxy-set: {exc}") from None
        for t in primary + variants:
            if t.kind == "threescale" and (only is None or fnmatch.fnmatch(t.name, only) or only == t.base):
                t.proxy_set.append((key, value))
    return primary, variants


def select(args: argparse.Namespace, primary: list[Target], variants: list[Target]) -> tuple[list[Case], list[str]]:
    """Cases and target names left by --only."""
    names = [n.strip() for chunk in args.only for n in chunk.split(",") if n.strip()]
    case_names = [c.name for c in CASES]
    target_names = [t.name for t in primary + variants]
    for n in names:
        if not fnmatch.filter(case_names + target_names, n):
            raise SystemExit(f"--only {n}: no such case or target (cases: {case_names}; targets: {target_names})")
    want_cases = [n for n in names if fnmatch.filter(case_names, n)]
    want_targets = [n for n in names if fnmatch.filter(target_names, n)]
    cases = [c for c in CASES if not want_cases or any(fnmatch.fnmatch(c.name, n) for n in want_cases)]
    chosen = [
        t.name
        for t in primary + variants
        if not want_targets or any(fnmatch.fnmatch(t.name, n) or fnmatch.fnmatch(t.base, n) for n in want_targets)
    ]
    return cases, chosen


def next_db(url: str) -> str:
    """The same Redis, the next database: redis://h:p/0 → redis://h:p/1."""
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{db + 1}"))


def flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


class Bench:
    def __init__(self, args: argparse.Namespace, children: Children, work: Path) -> None:
        self.args = args
        self.children = children
        self.work = work
        self.primary, self.variants = build_targets(args)
        self.cases, self.chosen = select(args, self.primary, self.variants)
        self.servers: dict[str, Server] = {}
        self.helpers: dict[str, Server] = {}
        self.skipped: list[dict[str, str]] = []
        self.failed: set[tuple[str, str]] = set()
        self.runs: list[dict[str, Any]] = []
        self.redis_url = "memory://"
        self.script_dir = work / "lua"
        self.script_dir.mkdir()
        self.started = datetime.now(UTC)
        self.git = git_info(targets.REPO)  # at the start: others may commit while it runs

    # ------------------------------------------------------------------------------------- which runs

    def targets_for(self, case: Case) -> list[Target]:
        if case.kind == "workers":
            pool = self.variants
        elif case.kind == "miss":
            pool = [t for t in self.primary if t.kind == "threescale"]
        else:
            pool = self.primary
        return [t for t in pool if t.name in self.chosen]

    def skip(self, target: str, case: str, reason: str) -> None:
        self.skipped.append({"target": target, "case": case, "reason": reason})
        self.failed.add((target, case))
        print(f"  skipped {target} {case}: {reason}", flush=True)

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        if self.args.redis == "local":
            server, self.redis_url = targets.start_redis(self.children, self.work, CLIENT_CPUS)
            self.helpers["redis"] = server
        elif self.args.redis:
            self.redis_url = self.args.redis
            if self.redis_url.startswith(("redis://", "rediss://")):
                flush(self.redis_url)
        if any(c.kind == "workers" for c in self.cases) and self.redis_url == "memory://":
            for t in self.targets_for(next(c for c in self.cases if c.kind == "workers")):
                self.skip(t.name, "workers", "needs --redis (memory:// refuses workers > 1)")
            self.cases = [c for c in self.cases if c.kind != "workers"]
        wanted = {t.name for c in self.cases for t in self.targets_for(c)}
        kinds = {t.kind for t in self.primary + self.variants if t.name in wanted}
        print("starting servers", flush=True)
        if kinds - {"upstream"}:
            self.helpers["backend"] = targets.start_nginx_upstream(self.children, self.work, "backend", CLIENT_CPUS)
        if "threescale" in kinds:
            self.helpers["emulator"] = targets.start_emulator(
                self.children, self.work, MISS_KEYS + MISS_SPARE, CLIENT_CPUS
            )
        if any(c.kind == "workers" for c in self.cases):
            self.helpers["backend-wide"] = targets.start_nginx_upstream(
                self.children, self.work, "backend-wide", BOTH_CPUS, workers=2
            )
        for t in self.primary + self.variants:
            if t.name not in wanted:
                continue
            try:
                self.servers[t.name] = self.start(t)
            except StartError as exc:
                for c in self.cases:
                    if t in self.targets_for(c):
                        self.skip(t.name, c.name, f"did not start: {exc}")
        self.verify()

    def start(self, t: Target) -> Server:
        backend = self.helpers.get("backend")
        if t.kind == "upstream":
            return targets.start_nginx_upstream(self.children, self.work, "upstream", SERVER_CPUS)
        assert backend is not None
        if t.kind == "nginx":
            return targets.start_nginx_proxy(self.children, self.work, backend.port, SERVER_CPUS)
        if t.kind == "haproxy":
            return targets.start_haproxy(self.children, self.work, backend.port, SERVER_CPUS)
        return self.start_proxy(t)

    def proxy_cfg(self, t: Target, *, redis_url: str | None = None) -> dict[str, Any]:
        upstream = self.helpers["backend-wide" if t.workers else "backend"]
        cfg = targets.proxy_config(
            port=targets.free_port(),
            metrics_port=targets.free_port(),
            redis_url=redis_url or self.redis_url,
            backend_url=f"http://127.0.0.1:{self.helpers['emulator'].port}",
            upstream_port=upstream.port,
        )
        if t.workers is not None:
            cfg["workers"] = t.workers
        for key, value in t.proxy_set:
            targets.set_dotted(cfg, key, value)
        return cfg

    def start_proxy(self, t: Target, *, cfg: dict[str, Any] | None = None, warm: bool = True) -> Server:
        assert t.src is not None
        targets.check_proxy_source(t.src)
        cpus = BOTH_CPUS if t.workers else SERVER_CPUS
        server = targets.start_threescale(
            self.children, self.work, t.name, src=t.src, cfg=cfg or self.proxy_cfg(t), cpus=cpus, warm=warm
        )
        server.info["processes"] = cpu.tree_size(server.pid)
        server.info["git"] = git_info(t.src)
        return server

    def verify(self) -> None:
        """One request per target and case before any load: the answer is what the case expects, and a
        1 MiB POST reached the upstream whole (its log has the request's length)."""
        for case in self.cases:
            for i, t in enumerate(self.targets_for(case)):
                server = self.servers.get(t.name)
                if server is None or (t.name, case.name) in self.failed or case.kind == "miss":
                    continue
                try:
                    self.verify_one(t, case, server, f"v{i}{case.name}")
                except (AssertionError, OSError) as exc:
                    self.skip(t.name, case.name, f"verification failed: {exc}")

    def verify_one(self, t: Target, case: Case, server: Server, token: str) -> None:
        headers = {"x-api-key": KEY}
        if case.kind == "large-upload":
            body = os.urandom(BIG_BYTES)
            status, answer = targets.http_request(server.port, "POST", f"/upload?verify={token}", headers, body)
            assert status == 200, f"POST /upload: HTTP {status} {answer[:200]!r}"
            upstream = server if t.kind == "upstream" else self.helpers["backend"]
            log = Path(upstream.info["upload_log"])
            deadline = time.monotonic() + 2
            while True:
                lines = [ln.split() for ln in (log.read_text().splitlines() if log.exists() else [])]
                got = [int(ln[1]) for ln in lines if ln and ln[0] == token]
                if got or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert got, f"the upstream never logged the POST {token}"
            assert got[0] >= BIG_BYTES, f"the upstream read {got[0]} bytes of a {BIG_BYTES}-byte POST"
            return
        status, answer = targets.http_request(server.port, "GET", case.path, headers)
        assert status == 200, f"GET {case.path}: HTTP {status} {answer[:200]!r}"
        if case.kind == "large-response":
            assert len(answer) == BIG_BYTES, f"GET /big: {len(answer)} bytes, not {BIG_BYTES}"
        else:
            assert answer == SMALL_BODY.encode(), f"GET /: {answer[:200]!r}"

    # ------------------------------------------------------------------------------------------- runs

    def script(self, name: str, text: str) -> str:
        path = self.script_dir / f"{name}.lua"
        if not path.exists():
            path.write_text(text)
        return str(path)

    def wrk_command(self, case: Case, port: int, seconds: float) -> tuple[list[str], str | None]:
        headers: list[str] = []
        script = None
        stop_when = None
        if case.kind == "miss":
            script = self.script("miss", wrk.distinct_keys_script(MISS_PREFIX, MISS_KEYS, MISS_SPARE))
            stop_when = "bench: done="
        else:
            headers.append(f"x-api-key: {KEY}")
        if case.kind == "large-upload":
            script = self.script("upload", wrk.upload_script(case.body_bytes))
        wide = case.kind == "workers"
        cmd = wrk.command(
            f"http://127.0.0.1:{port}{case.path}",
            seconds=seconds,
            connections=case.connections,
            threads=2 if wide else 1,
            headers=headers,
            script=script,
            cpus=BOTH_CPUS if wide else CLIENT_CPUS,
        )
        return cmd, stop_when

    def run_one(self, t: Target, case: Case, round_no: int, seconds: float, record: bool = True) -> None:
        if (t.name, case.name) in self.failed:
            return
        fresh: Server | None = None
        if case.kind == "miss":
            miss_url = next_db(self.redis_url) if self.redis_url != "memory://" else "memory://"
            if miss_url != "memory://":
                flush(miss_url)
            cfg = self.proxy_cfg(t, redis_url=miss_url)
            targets.set_dotted(cfg, "report.interval", 3600)
            try:
                fresh = self.start_proxy(t, cfg=cfg, warm=True)  # the warm-up key is not one of the 10,000
            except StartError as exc:
                self.skip(t.name, case.name, f"fresh proxy did not start: {exc}")
                return
            server = fresh
        else:
            server = self.servers[t.name]
        try:
            self.measure(t, case, server, round_no, seconds, record)
        finally:
            if fresh is not None:
                # SIGKILL: a graceful stop would re-authorize 10,000 keys for its final report
                self.children.stop(fresh.proc, kill=True)

    def measure(self, t: Target, case: Case, server: Server, round_no: int, seconds: float, record: bool) -> None:
        cmd, stop_when = self.wrk_command(case, server.port, seconds)
        helpers = {name: h.pid for name, h in self.helpers.items()}
        roots = list(dict.fromkeys([server.pid, *helpers.values(), *(s.pid for s in self.servers.values())]))
        quiet_before = self.wait_quiet() if record else None
        own_before = cpu.own_ticks()
        before, cores_before, t0 = cpu.tree_ticks_of(roots), cpu.core_times(), time.monotonic()
        started: list[subprocess.Popen[bytes]] = []

        def register(proc: subprocess.Popen[bytes]) -> None:
            started.append(proc)
            self.children.register(proc)

        try:
            out, err = wrk.run(cmd, register=register, stop_when=stop_when)
        finally:
            for proc in started:
                self.children.stop(proc, timeout=1)
        after, cores_after, wall = cpu.tree_ticks_of(roots), cpu.core_times(), time.monotonic() - t0
        ours = sum(after[p] - before[p] for p in roots if p in before and p in after)
        other = cpu.other_load(cores_before, cores_after, ours + cpu.own_ticks() - own_before)
        if not record:
            return
        run: dict[str, Any] = {"round": round_no, "target": t.name, "case": case.name, "wall_s": round(wall, 3)}
        try:
            res = wrk.parse_output(out)
        except ValueError:
            reason = (err.strip() or out.strip() or "no output").splitlines()[-1]
            run.update({"rps": None, "errors_total": 1, "failure": f"wrk: {reason}"})
            self.runs.append(run)
            print(f"  round {round_no + 1} {case.name:<15} {t.name:<18} FAILED: {reason}", flush=True)
            return
        rps = res.rps
        if "done" in res.script and "elapsed" in res.script:
            rps = int(res.script["done"]) / float(res.script["elapsed"])
        busy = cpu.core_busy(cores_before, cores_after)
        server_us = cpu.cpu_us_per_request(before[server.pid], after[server.pid], res.requests)
        run.update(
            {
                "rps": rps,
                "requests": res.requests,
                "duration_s": res.duration_s,
                "bytes_read": res.bytes_read,
                "mb_s": rps * case.body_bytes / 1e6 if case.body_bytes else None,
                "avg_ms": res.latency_ms.get("avg"),
                "p50_ms": res.latency_ms.get("50"),
                "p75_ms": res.latency_ms.get("75"),
                "p90_ms": res.latency_ms.get("90"),
                "p99_ms": res.latency_ms.get("99"),
                "cpu_us_per_req": server_us,
                "server_cpu_share": (after[server.pid] - before[server.pid]) / cpu.CLK_TCK / wall,
                "helper_cpu_us_per_req": {
                    name: cpu.cpu_us_per_request(before[pid], after[pid], res.requests) for name, pid in helpers.items()
                },
                "helper_cpu_share": {
                    name: (after[pid] - before[pid]) / cpu.CLK_TCK / wall for name, pid in helpers.items()
                },
                "emulator_cpu_share": (
                    (after[helpers["emulator"]] - before[helpers["emulator"]]) / cpu.CLK_TCK / wall
                    if "emulator" in helpers
                    else None
                ),
                "core_busy": busy,
                "client_core_busy": None if case.kind == "workers" else busy.get(f"cpu{CLIENT_CPUS}"),
                "processes": cpu.tree_size(server.pid),
                "other_load_before": quiet_before,
                "other_load": other,
                "errors": {**res.socket_errors, "non_2xx": res.non_2xx},
                "errors_total": res.errors,
                "wrk": cmd,
            }
        )
        if res.errors:
            run["wrk_output"] = out
        self.runs.append(run)
        p99 = res.latency_ms.get("99")
        print(
            f"  round {round_no + 1} {case.name:<15} {t.name:<18} {rps:>10,.0f} rps  "
            f"{(server_us or 0):>7.1f} µs/req  p99 {p99 if p99 is not None else float('nan'):.2f} ms"
            + (f"  ERRORS {res.errors}" if res.errors else ""),
            flush=True,
        )

    def wait_quiet(self, limit: float = 0.15, timeout: float = 10.0) -> float:
        """Until the machine is idle between runs (busy < `limit` of a core over 0.3 s; our idle servers
        use next to nothing), at most `timeout` seconds. Returns the last busy figure."""
        deadline = time.monotonic() + timeout
        warned = False
        while True:
            before = cpu.core_times()
            time.sleep(0.3)
            busy = cpu.busy_cores(before, cpu.core_times())
            if busy < limit or time.monotonic() > deadline:
                if busy >= limit:
                    print(f"  machine still busy ({busy:.2f} cores of other load): measuring anyway", flush=True)
                return busy
            if not warned:
                print(f"  waiting for the machine to be idle ({busy:.2f} cores busy)", flush=True)
                warned = True

    def warmup(self) -> None:
        if self.args.warmup <= 0:
            return
        print(f"warm-up: {self.args.warmup:g} s per target and case", flush=True)
        for case in self.cases:
            if case.kind == "miss":
                continue
            for t in self.targets_for(case):
                if t.name in self.servers:
                    self.run_one(t, case, -1, self.args.warmup, record=False)

    def rounds(self) -> None:
        for r in range(self.args.rounds):
            print(f"round {r + 1}/{self.args.rounds}", flush=True)
            for case in self.cases:
                for name in report.alternating([t.name for t in self.targets_for(case)], r):
                    t = next(x for x in self.primary + self.variants if x.name == name)
                    if name in self.servers or case.kind == "miss":
                        self.run_one(t, case, r, self.args.seconds)

    # ----------------------------------------------------------------------------------------- output

    def result(self) -> dict[str, Any]:
        summary = report.summarize(self.runs)
        workers = {r["target"]: r for r in summary if r["case"] == "workers"}
        w1, w2 = workers.get("threescale/w1"), workers.get("threescale/w2")
        return {
            "schema": 1,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": self.git,
            "machine": machine_info(),
            "options": {
                "rounds": self.args.rounds,
                "seconds": self.args.seconds,
                "warmup": self.args.warmup,
                "redis": self.redis_url if self.args.redis != "local" else "local",
                "proxy_set": self.args.proxy_set,
                "proxy_src": self.args.proxy_src,
                "only": self.args.only,
                "pinning": {"server": SERVER_CPUS, "client": CLIENT_CPUS, "workers_case": BOTH_CPUS},
                "miss_keys": MISS_KEYS,
            },
            "targets": {
                name: {
                    "pid_tree_processes": s.info.get("processes"),
                    "cpus": s.cpus,
                    "git": s.info.get("git"),
                    "proxy_set": next((t.proxy_set for t in self.primary + self.variants if t.name == name), None),
                }
                for name, s in self.servers.items()
            },
            "cases": {c.name: {"kind": c.kind, "connections": c.connections, "path": c.path} for c in self.cases},
            "summary": summary,
            "workers_scaling": report.ratio(w2["rps"], w1["rps"]) if w1 and w2 else None,
            "skipped": self.skipped,
            "runs": self.runs,
        }


def save(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}-{result['git']['short']}.json"
    text = json.dumps(result, indent=1, default=str) + "\n"
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    return path


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("wrk", "nginx", "haproxy", "taskset"):
        targets.tool(name)
    if args.redis == "local":
        targets.tool("redis-server")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    with tempfile.TemporaryDirectory(prefix="tsp-bench-") as tmp, Children() as children:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as nobody when we are root: they read www/ under here
        bench = Bench(args, children, work)
        used = sorted({t.name for c in bench.cases for t in bench.targets_for(c)}, key=bench.chosen.index)
        print(
            f"python -m bench: {args.rounds} rounds × {args.seconds:g} s, cases {[c.name for c in bench.cases]}, "
            f"targets {used}; server on core {SERVER_CPUS}, wrk on core {CLIENT_CPUS}",
            flush=True,
        )
        try:
            bench.setup()
            bench.warmup()
            bench.rounds()
        except KeyboardInterrupt:
            print("interrupted: stopping every process", file=sys.stderr)
            return 130
        result = bench.result()
    print()
    m = result["machine"]
    print(f"{m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}")
    g = result["git"]
    print(f"git {g['short']}{' (dirty)' if g['dirty'] else ''}, redis_url {result['options']['redis']}")
    print(report.format_table(result["summary"], result["skipped"]))
    if result["workers_scaling"] is not None:
        print(f"workers=2 / workers=1 throughput: {result['workers_scaling']:.2f}")
    if not args.no_save:
        path = save(result)
        print(f"\nresults: {path.relative_to(targets.REPO)} (and bench/results/latest.json)")
    if args.compare:
        saved = json.loads(args.compare.read_text())
        print()
        print(report.format_compare(report.compare(result["summary"], saved["summary"]), str(args.compare)))
    return 1 if any(r["errors"] for r in result["summary"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
