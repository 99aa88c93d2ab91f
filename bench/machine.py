"""What a result was measured on: CPU, cores, kernel, Python, package and tool versions, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("aiohttp", "httptools", "redis", "PyYAML", "prometheus-client", "uvloop", "py-spy")


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware"):
            return value.strip()
    return platform.processor() or "unknown"


def git_info(repo: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    sha = git("rev-parse", "HEAD")
    return {
        "sha": sha or None,
        "short": git("rev-parse", "--short", "HEAD") or "nogit",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "subject": git("log", "-1", "--format=%s") or None,
    }


def tool_version(argv: list[str], env: dict[str, str] | None = None) -> str | None:
    """The first line a tool prints for its version (nginx writes it to stderr)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0].strip() if text else None


def machine_info() -> dict[str, Any]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    sbin = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    env = {**os.environ, "PATH": sbin}

    def ver(*argv: str) -> str | None:
        return tool_version(list(argv), env)

    return {
        "cpu_model": cpu_model(cpuinfo),
        "cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "packages": versions,
        "tools": {"wrk": ver("wrk", "-v"), "nginx": ver("nginx", "-v"), "haproxy": ver("haproxy", "-v")},
        "governor": governor.read_text().strip() if governor.exists() else None,
    }
