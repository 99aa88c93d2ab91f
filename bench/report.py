"""Medians over rounds, ratios against nginx, the printed table and the comparison with a saved run.

All pure (tests/unit/test_bench_parsing.py): runs in, rows and text out.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BASELINE = "nginx"
CLIENT_BOUND = 0.95  # the load generator's core this busy: the figure is a lower bound for the target
OTHER_LOAD = 0.1  # cores' worth of CPU used by processes not ours during a run: the machine was not quiet
NOTES = {
    "miss": "every request a new key, so a call to the emulator (3scale stand-in)",
}


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def summarize(runs: Sequence[Mapping[str, Any]], baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per (target, case) in first-run order: medians over rounds, ratios of medians vs baseline."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["case"]), []).append(run)
    rows: list[dict[str, Any]] = []
    for (target, case), group in groups.items():
        row: dict[str, Any] = {"target": target, "case": case, "rounds": len(group)}
        keys = ("rps", "cpu_us_per_req", "p50_ms", "p99_ms", "mb_s", "server_cpu_share", "client_core_busy")
        for key in (*keys, "other_load", "emulator_cpu_share"):
            row[key] = median(r.get(key) for r in group)
        row["errors"] = sum(int(r.get("errors_total", 0)) for r in group)
        row["rps_rounds"] = [r.get("rps") for r in group]
        rows.append(row)
    base = {row["case"]: row for row in rows if row["target"] == baseline}
    for row in rows:
        b = base.get(row["case"])
        row["rps_x_nginx"] = ratio(row["rps"], b["rps"]) if b else None
        row["cpu_x_nginx"] = ratio(row["cpu_us_per_req"], b["cpu_us_per_req"]) if b else None
        row["p99_x_nginx"] = ratio(row["p99_ms"], b["p99_ms"]) if b else None
        row["mb_s_x_nginx"] = ratio(row["mb_s"], b["mb_s"]) if b else None
    return rows


def spread(values: Sequence[float | None]) -> float | None:
    """(max - min) / median of the rounds: how far apart the rounds were."""
    present = [v for v in values if v is not None]
    mid = median(present)
    if not present or not mid:
        return None
    return (max(present) - min(present)) / mid


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def format_table(rows: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, str]] = ()) -> str:
    head = (
        f"{'target':<18} {'case':<15} {'rps':>9} {'×nginx':>7} {'CPU µs/req':>10} {'×nginx':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'×nginx':>7} {'MB/s':>7}  notes"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        notes = []
        if r.get("errors"):
            notes.append(f"ERRORS {r['errors']}")
        busy = r.get("client_core_busy")
        if busy is not None and busy >= CLIENT_BOUND:
            notes.append(f"wrk core {busy:.0%} busy: lower bound")
        share = r.get("server_cpu_share")
        if share is not None and r["case"] != "workers":
            notes.append(f"server {share:.0%} of a core")
        other = r.get("other_load")
        if other is not None and other >= OTHER_LOAD:
            notes.append(f"other processes used {other:.2f} cores")
        sp = spread(r.get("rps_rounds", ()))
        if sp is not None and sp > 0.1:
            notes.append(f"rounds ±{sp / 2:.0%}")
        if r["case"] in NOTES:
            notes.append(NOTES[r["case"]])
            emu = r.get("emulator_cpu_share")
            if emu is not None:
                notes.append(f"emulator {emu:.0%} of a core" + (": bounded by it" if emu >= CLIENT_BOUND else ""))
        flag = "!" if r.get("errors") else ""
        lines.append(
            f"{(r['target'] + flag):<18} {r['case']:<15} {_num(r['rps'], ',.0f'):>9} "
            f"{_num(r.get('rps_x_nginx'), '.2f'):>7} {_num(r['cpu_us_per_req'], '.1f'):>10} "
            f"{_num(r.get('cpu_x_nginx'), '.2f'):>7} {_ms(r['p50_ms']):>7} {_ms(r['p99_ms']):>7} "
            f"{_num(r.get('p99_x_nginx'), '.2f'):>7} {_num(r.get('mb_s'), '.0f'):>7}  {'; '.join(notes)}"
        )
    for s in skipped:
        lines.append(f"{s['target']:<18} {s['case']:<15} skipped: {s['reason']}")
    return "\n".join(lines)


def compare(current: Sequence[Mapping[str, Any]], saved: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """This run's medians over a saved run's, for each (target, case) both have."""
    old = {(r["target"], r["case"]): r for r in saved}
    rows = []
    for r in current:
        o = old.get((r["target"], r["case"]))
        if o is None:
            continue
        rows.append(
            {
                "target": r["target"],
                "case": r["case"],
                "rps": ratio(r.get("rps"), o.get("rps")),
                "cpu_us_per_req": ratio(r.get("cpu_us_per_req"), o.get("cpu_us_per_req")),
                "p99_ms": ratio(r.get("p99_ms"), o.get("p99_ms")),
            }
        )
    return rows


def format_compare(rows: Sequence[Mapping[str, Any]], label: str) -> str:
    head = f"{'target':<18} {'case':<15} {'rps now/then':>12} {'CPU now/then':>12} {'p99 now/then':>12}"
    lines = [f"compared with {label}", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['target']:<18} {r['case']:<15} {_num(r['rps'], '.2f'):>12} "
            f"{_num(r['cpu_us_per_req'], '.2f'):>12} {_num(r['p99_ms'], '.2f'):>12}"
        )
    if not rows:
        lines.append("(no target and case in common)")
    return "\n".join(lines)


def alternating(items: Sequence[str], round_no: int) -> list[str]:
    """Round 0 in order, round 1 reversed, and so on (ABCD, DCBA, ABCD): paired rounds."""
    return list(items) if round_no % 2 == 0 else list(reversed(items))
