"""CPU time from /proc: a process tree's own user+system time, and each core's busy share.

The parsing and the arithmetic are pure functions (tests/unit/test_bench_parsing.py); `tree_ticks_of` and
`core_times` read /proc. Times are in clock ticks (`os.sysconf("SC_CLK_TCK")`, 100 on Linux).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

CLK_TCK: int = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the CPU accounting needs (times in clock ticks)."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def ticks(self) -> int:
        """Own time plus that of the children it has reaped (a reaped child is counted nowhere else)."""
        return self.utime + self.stime + self.cutime + self.cstime


def parse_proc_stat(text: str) -> ProcStat:
    """One /proc/<pid>/stat line. `comm` (field 2) is in parentheses and may hold spaces and parentheses,
    so the fields are counted from the last `)`: state is field 3, ppid 4, utime 14, stime 15, cutime 16,
    cstime 17 (proc(5))."""
    left = text.index("(")
    right = text.rindex(")")
    pid = int(text[:left].strip())
    rest = text[right + 1 :].split()  # rest[0] is field 3 (state)
    if len(rest) < 15:
        raise ValueError(f"short /proc stat line: {text!r}")

    def field(n: int) -> int:
        return int(rest[n - 3])

    return ProcStat(pid=pid, ppid=field(4), utime=field(14), stime=field(15), cutime=field(16), cstime=field(17))


def descendants(stats: Mapping[int, ProcStat], root: int) -> set[int]:
    """`root` and every process below it (by ppid), among `stats`."""
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    found: set[int] = set()
    todo = [root] if root in stats else []
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_ticks(stats: Mapping[int, ProcStat], root: int) -> int:
    """CPU ticks of the tree under `root`: nginx's master and workers, haproxy, the proxy and its workers."""
    return sum(stats[pid].ticks for pid in descendants(stats, root))


def tree_user_system(stats: Mapping[int, ProcStat], root: int) -> tuple[int, int]:
    """(user, system) ticks of the tree under `root`, reaped children included: where its CPU went."""
    tree = descendants(stats, root)
    user = sum(stats[pid].utime + stats[pid].cutime for pid in tree)
    system = sum(stats[pid].stime + stats[pid].cstime for pid in tree)
    return user, system


def cpu_us_per_request(ticks_before: int, ticks_after: int, requests: int, clk_tck: int = CLK_TCK) -> float | None:
    """Microseconds of CPU per request over a run, or None without requests."""
    if requests <= 0:
        return None
    return (ticks_after - ticks_before) * 1_000_000 / clk_tck / requests


def read_all_stats(proc: str = "/proc") -> dict[int, ProcStat]:
    """Every process's stat (processes that exit while being read are skipped)."""
    stats: dict[int, ProcStat] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", encoding="utf-8", errors="replace") as f:
                st = parse_proc_stat(f.read())
        except (OSError, ValueError):
            continue
        stats[st.pid] = st
    return stats


def tree_ticks_of(roots: Iterable[int]) -> dict[int, int]:
    """CPU ticks of each root's tree, from one read of /proc."""
    stats = read_all_stats()
    return {root: tree_ticks(stats, root) for root in roots}


def tree_size(root: int) -> int:
    """Processes in the tree under `root` (a proxy with workers=2 has more than one)."""
    return len(descendants(read_all_stats(), root))


# ---------------------------------------------------------------------------------------- per core


def parse_core_times(text: str) -> dict[str, tuple[int, int]]:
    """/proc/stat → {"cpu0": (busy, total), ...} in ticks; busy = total - idle - iowait."""
    cores: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu") or parts[0] == "cpu":
            continue
        values = [int(v) for v in parts[1:]]
        # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
        total = sum(values[:8])
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        cores[parts[0]] = (total - idle, total)
    return cores


def core_busy(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> dict[str, float]:
    """Busy share (0..1) of each core between two /proc/stat readings."""
    busy: dict[str, float] = {}
    for core, (b1, t1) in after.items():
        if core not in before:
            continue
        b0, t0 = before[core]
        busy[core] = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
    return busy


def core_times() -> dict[str, tuple[int, int]]:
    with open("/proc/stat", encoding="ascii") as f:
        return parse_core_times(f.read())


def busy_cores(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> float:
    """Cores' worth of busy time between two readings (1.0 = one core busy all along)."""
    return sum(core_busy(before, after).values())


def other_load(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]], our_ticks: int
) -> float | None:
    """Cores' worth of CPU the machine spent on processes other than ours (`our_ticks` over the same
    interval): another job running during a benchmark shows up here."""
    cores = [c for c in after if c in before]
    if not cores:
        return None
    wall = sum(after[c][1] - before[c][1] for c in cores) / len(cores)
    busy = sum(after[c][0] - before[c][0] for c in cores)
    return max(0.0, (busy - our_ticks) / wall) if wall > 0 else None


def own_ticks() -> int:
    """This process's CPU and that of its reaped children (wrk, taskset), in ticks."""
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * CLK_TCK)
