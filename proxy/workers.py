"""`workers: N`: N proxy processes serving one port, under a supervisor (like nginx's master process).

With more than one worker, `threescale-proxy serve` becomes the supervisor. It starts each worker as a fresh
interpreter (`python -m proxy serve ... --worker-index I`: nothing is inherited from a fork of a process that
imported asyncio), and every worker is a whole `ProxyServer` binding both listeners with SO_REUSEPORT, so the
kernel spreads new connections over them. Everything they share lives in Redis, which is why `memory://` means
one worker. The supervisor itself serves nothing and imports neither aiohttp nor the proxy.

- Port 0 in `listen`/`metrics_listen` is resolved by the supervisor: it binds a free port (SO_REUSEPORT, not
  listening, held until it exits) and hands it to every worker, so all of them and every restart share it.
- Metrics: the supervisor makes a fresh directory for prometheus_client's multiprocess mode
  (PROMETHEUS_MULTIPROC_DIR, set for the workers before they import it; removed at exit), so /metrics,
  whichever worker answers, is the sum over all workers. /healthz and /readyz answer for the worker that
  takes the connection.
- SIGTERM/SIGINT go to every worker, which drains as one process does; workers still running
  `shutdown.timeout` + STOP_MARGIN later are killed. Exit 0 when every worker exited 0.
- A worker that dies is started again after a backoff (logged with its exit code). A worker that exits before
  it was ready MAX_START_FAILURES times in a row (a port in use, a bad secret) stops everything: exit 1.
- A worker whose supervisor is gone (SIGKILL) drains and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from prometheus_client import multiprocess

from .config import Settings, parse_listen
from .logs import setup_logging
from .metrics import MULTIPROC_ENV

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
STOP_MARGIN = 2.0
"""Seconds past shutdown.timeout the supervisor waits for a worker before it kills it (within the chart's
grace period: preStop + shutdown.timeout + 5)."""
RESTART_BACKOFF = 0.5
"""Seconds before a dead worker is started again; doubles with each quick death, up to RESTART_BACKOFF_MAX."""
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER = 10.0
"""A worker that ran this long before it died is restarted after RESTART_BACKOFF again."""
MAX_START_FAILURES = 3
"""Exits in a row of one worker before it was ready that make the supervisor give up (exit 1)."""
PARENT_CHECK = 1.0
"""Seconds between a worker's checks that its supervisor is still there."""


# ------------------------------------------------------------------------------------------------ how many


def cpu_max_cpus(text: str) -> float | None:
    """cgroup v2 `cpu.max` as CPUs: "150000 100000" is 1.5; "max 100000" (no quota) is None."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cfs_quota_cpus(quota: str, period: str) -> float | None:
    """cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` as CPUs; a quota of -1 (none) is None."""
    try:
        q, p = int(quota.strip()), int(period.strip())
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, self_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota, as CPUs, over this process's cgroup and the ancestors visible from here.

    In a container (its own cgroup namespace) its cgroup is `root` itself; without one, `self_cgroup` (the
    text of /proc/self/cgroup) names the path below `root`. Both v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`
    under the `cpu` controller's mount) are read; None when no quota is set anywhere.
    """
    if self_cgroup is None:
        self_cgroup = _read(PROC_SELF_CGROUP) or ""
    v2_paths, v1_paths = ["/"], ["/"]
    for line in self_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2_paths.append(path)
        elif "cpu" in controllers.split(","):
            v1_paths.append(path)
    quotas: list[float] = []
    for directory in _with_ancestors(root, v2_paths):
        text = _read(directory / "cpu.max")
        found = cpu_max_cpus(text) if text is not None else None
        if found is not None:
            quotas.append(found)
    for mount in (root / "cpu", root / "cpu,cpuacct"):
        for directory in _with_ancestors(mount, v1_paths):
            quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
            found = cfs_quota_cpus(quota, period) if quota is not None and period is not None else None
            if found is not None:
                quotas.append(found)
    return min(quotas) if quotas else None


def container_cpus(*, root: Path = CGROUP_ROOT, self_cgroup: str | None = None, affinity: int | None = None) -> int:
    """The CPUs this container may use: the CPUs it may run on (affinity), capped by a cgroup CPU quota
    rounded up (a limit of 1.5 CPUs is 2); at least 1."""
    cpus = len(os.sched_getaffinity(0)) if affinity is None else affinity
    quota = cgroup_cpu_quota(root, self_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(cpus, 1)


def effective_workers(settings: Settings, cpus: Callable[[], int] = container_cpus) -> int:
    """`workers` if set; otherwise 1 on `memory://` (each process would have its own state) and the CPUs the
    container may use on a shared Redis."""
    if settings.workers is not None:
        return settings.workers
    if urlsplit(settings.redis_url).scheme == "memory":
        return 1
    return max(cpus(), 1)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _with_ancestors(base: Path, paths: Sequence[str]) -> Iterator[Path]:
    """`base`/path and each of its parents up to `base`, for every path, each directory once."""
    seen: set[Path] = set()
    for path in paths:
        relative = PurePosixPath(path.strip() or "/")
        for part in (relative, *relative.parents):
            directory = base / str(part).lstrip("/") if str(part) != "/" else base
            if ".." not in part.parts and directory not in seen:
                seen.add(directory)
                yield directory


# ------------------------------------------------------------------------------------------------ ports


def reserve_ports(settings: Settings) -> tuple[dict[str, str], list[socket.socket]]:
    """Resolve port 0 in `listen`/`metrics_listen` to a free port the workers can share.

    Each is held by a socket bound with SO_REUSEPORT but not listening (it takes no connections) until the
    supervisor exits, so no other program takes the port between worker restarts. Returns the PROXY_LISTEN /
    PROXY_METRICS_LISTEN overrides for the workers and the sockets to close at exit.
    """
    overrides: dict[str, str] = {}
    held: list[socket.socket] = []
    try:
        for key in ("listen", "metrics_listen"):
            host, port = parse_listen(getattr(settings, key))
            if port != 0:
                continue
            family, kind, proto, _, address = socket.getaddrinfo(
                host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            chosen = sock.getsockname()[1]
            overrides[f"PROXY_{key.upper()}"] = f"[{host}]:{chosen}" if ":" in host else f"{host}:{chosen}"
    except OSError:
        for sock in held:
            sock.close()
        raise
    return overrides, held


# ------------------------------------------------------------------------------------------------ supervisor


@dataclass
class _Worker:
    """One worker slot: the process now in it and its restart bookkeeping."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started: float = 0.0
    start_failures: int = 0
    backoff: float = RESTART_BACKOFF
    exit_code: int | None = None
    """The exit code of the process that was running when the supervisor stopped (None: none was)."""
    killed: bool = False


class Supervisor:
    """Runs `workers` worker processes until SIGTERM/SIGINT, restarting those that die.

    `child_args` is what each worker's `python -m proxy serve` gets before the worker flags (`--config FILE`).
    """

    def __init__(
        self,
        settings: Settings,
        workers: int,
        child_args: Sequence[str] = (),
        *,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.child_args = list(child_args)
        self.python = python
        self.env = env
        self._slots: list[_Worker] = []
        self._stopping = asyncio.Event()
        self._gave_up = False
        self._announced = False
        self._child_env: dict[str, str] = {}
        self._metrics_dir = ""

    async def run(self) -> int:
        """Start the workers, wait for a signal (or for a worker that cannot start), stop them; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
        try:
            overrides, held = reserve_ports(self.settings)
        except OSError as exc:
            log.error("cannot reserve a port for the workers", extra={"fields": {"error": str(exc)}})
            return 1
        self._metrics_dir = tempfile.mkdtemp(prefix="threescale-proxy-metrics-")
        self._child_env = {**(os.environ if self.env is None else self.env), **overrides}
        self._child_env[MULTIPROC_ENV] = self._metrics_dir
        listen = overrides.get("PROXY_LISTEN", self.settings.listen)
        metrics_listen = overrides.get("PROXY_METRICS_LISTEN", self.settings.metrics_listen)
        log.info(
            "starting workers",
            extra={
                "fields": {
                    "workers": self.workers,
                    "listen": listen,
                    "metrics_listen": metrics_listen,
                    "metrics_dir": self._metrics_dir,
                }
            },
        )
        try:
            self._slots = [_Worker(i) for i in range(self.workers)]
            tasks = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
            await self._stopping.wait()
            return await self._stop(tasks)
        finally:
            for sock in held:
                sock.close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _forward_hup(self) -> None:
        """SIGHUP: every worker reloads the configuration file itself."""
        for slot in self._slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGHUP)

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._stopping.is_set():
            log.info("signal received, stopping workers", extra={"fields": {"signal": sig.name}})
            self._stopping.set()

    async def _keep(self, slot: _Worker) -> None:
        """Keep one worker running until the supervisor stops (or gives up on it)."""
        while not self._stopping.is_set():
            try:
                proc = await self._spawn(slot)
            except OSError as exc:
                log.error("cannot start a worker", extra={"fields": {"worker": slot.index, "error": str(exc)}})
                code, lived, pid = 1, 0.0, None
            else:
                code = await proc.wait()
                lived = time.monotonic() - slot.started
                pid = proc.pid
                with contextlib.suppress(OSError):
                    # its live gauges go; its counts stay in the sum
                    multiprocess.mark_process_dead(pid, self._metrics_dir)  # type: ignore[no-untyped-call]
                if self._stopping.is_set():
                    slot.exit_code = code
                    return
            if slot.ready and pid is not None:
                slot.start_failures = 0
                if lived >= STABLE_AFTER:
                    slot.backoff = RESTART_BACKOFF
            else:
                slot.start_failures += 1
            fields: dict[str, object] = {
                "worker": slot.index,
                "worker_pid": pid,
                "exit_code": code,
                "ready": slot.ready,
                "seconds": round(lived, 3),
            }
            if code < 0:
                with contextlib.suppress(ValueError):
                    fields["signal"] = signal.Signals(-code).name
            if slot.start_failures >= MAX_START_FAILURES:
                log.error(
                    f"worker exited before it was ready {slot.start_failures} times in a row; stopping",
                    extra={"fields": fields},
                )
                self._gave_up = True
                self._stopping.set()
                return
            log.error("worker exited; restarting it", extra={"fields": {**fields, "restart_in": slot.backoff}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), slot.backoff)
            slot.backoff = min(slot.backoff * 2, RESTART_BACKOFF_MAX)

    async def _spawn(self, slot: _Worker) -> asyncio.subprocess.Process:
        read_fd, write_fd = os.pipe()  # the worker writes one byte once it serves; EOF if it dies first
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "proxy",
                "serve",
                *self.child_args,
                "--worker-index",
                str(slot.index),
                "--worker-of",
                str(os.getpid()),
                "--ready-fd",
                str(write_fd),
                env=self._child_env,
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.proc, slot.ready, slot.started = proc, False, time.monotonic()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(read_fd, 1)
            except OSError:
                data = b""
            loop.remove_reader(read_fd)
            os.close(read_fd)
            if data and slot.proc is proc:
                slot.ready = True
                self._announce()

        loop.add_reader(read_fd, readable)
        if self._stopping.is_set():  # a signal came while it was being started
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        return proc

    def _announce(self) -> None:
        if not self._announced and all(slot.ready for slot in self._slots):
            self._announced = True
            pids = [slot.proc.pid for slot in self._slots if slot.proc is not None]
            log.info("workers ready", extra={"fields": {"workers": len(pids), "worker_pids": pids}})

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> int:
        """SIGTERM every worker; kill those still running past shutdown.timeout + STOP_MARGIN; the exit code."""
        for slot in self._slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)
        timeout = self.settings.shutdown.timeout + STOP_MARGIN
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            for slot in self._slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    slot.killed = True
                    log.error(
                        "worker did not stop in time; killing it",
                        extra={"fields": {"worker": slot.index, "worker_pid": slot.proc.pid, "timeout": timeout}},
                    )
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.kill()
            await asyncio.wait(pending)
        clean = not self._gave_up
        for slot in self._slots:
            code = slot.exit_code
            # a worker stopped before it was ready may die of the SIGTERM itself: it had nothing to drain
            fine = code is None or code == 0 or (code == -signal.SIGTERM and not slot.ready)
            clean = clean and fine and not slot.killed
        log.info(
            "workers stopped",
            extra={"fields": {"exit_codes": [slot.exit_code for slot in self._slots], "clean": clean}},
        )
        return 0 if clean else 1


def supervise(settings: Settings, config_path: str | None, workers: int) -> int:
    """`serve` with more than one worker: run the supervisor until it is stopped; the exit code."""
    setup_logging(settings.log.level, fields={"pid": os.getpid()}, shared=True)
    child_args = ["--config", config_path] if config_path else []
    return asyncio.run(Supervisor(settings, workers, child_args).run())


# ------------------------------------------------------------------------------------------------ one worker


def run_worker(
    settings: Settings, index: int, parent_pid: int | None, ready_fd: int | None, config_path: str | None = None
) -> int:
    """A worker: one ProxyServer sharing its ports (SO_REUSEPORT); tells the supervisor once it serves."""
    from .app import ProxyServer, run_until_signal  # the supervisor never imports the proxy itself
    from .eventloop import run

    setup_logging(settings.log.level, fields={"worker": index, "pid": os.getpid()}, shared=True)
    if parent_pid is not None:
        _stop_with_parent(parent_pid)
    server = ProxyServer(settings, reuse_port=True)

    async def start() -> None:
        await server.start()
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, b"r")
                os.close(ready_fd)

    return run(run_until_signal(start, server.stop, lambda: server.reload_file(config_path)), settings.event_loop)


def _stop_with_parent(parent_pid: int, interval: float = PARENT_CHECK) -> None:
    """SIGTERM this process (a normal drain) once its supervisor is gone: a worker never outlives it."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        log.error("supervisor is gone; stopping", extra={"fields": {"supervisor_pid": parent_pid}})
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
