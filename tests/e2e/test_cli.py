"""The commands as a user runs them, in their own processes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support import KEY, SERVICE_ID, TOKEN, eventually, free_port, wait_ready

PYTHON = sys.executable
MB = 1024 * 1024


def wait_for_line(proc: subprocess.Popen[str], pattern: str, timeout: float = 20) -> tuple[str, list[str]]:
    """Read stdout until a line matches; return it and everything read so far."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line.rstrip("\n"))
        if re.search(pattern, line):
            return line.rstrip("\n"), seen
    raise AssertionError(f"no line matching {pattern!r}; got:\n" + "\n".join(seen))


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture
def demo() -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    port, metrics_port = free_port(), free_port()
    proc = subprocess.Popen(
        [PYTHON, "-m", "proxy", "demo", "--port", str(port), "--metrics-port", str(metrics_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _, lines = wait_for_line(proc, r"^\s+curl -i .*/orders")  # the banner's last line
        yield proc, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_demo_answers_its_own_curl_line(demo):
    _proc, lines = demo
    curl_line = next(line.strip() for line in lines if line.strip().startswith("curl -i -H 'x-api-key: "))
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: the demo prints a curl line, so the test runs it")
    out = subprocess.run(shlex.split(curl_line), capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HTTP/1.1 200")
    assert '"path": "/hello"' in out.stdout or '"path":"/hello"' in out.stdout
    wrong = shlex.split(curl_line.replace("x-api-key: ", "x-api-key: wrong"))
    denied = subprocess.run(wrong, capture_output=True, text=True, timeout=10)
    assert denied.stdout.startswith("HTTP/1.1 403")
    assert '"reason": "user_key_invalid"' in denied.stdout


async def test_demo_applies_a_rule_added_in_the_portal_without_a_restart(demo):
    """The demo's own lines: /orders has no rule (404); the portal gets one; within the refresh it is 200."""
    _proc, lines = demo
    curls = [shlex.split(line.strip()) for line in lines if line.strip().startswith("curl ")]
    add_rule, orders = curls[-2], curls[-1]
    assert "/orders" in orders[-1] and "proxy_rules" in add_rule[3]
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed: the demo prints curl lines, so the test runs them")

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10)

    before = await asyncio.to_thread(run, orders)
    assert before.stdout.startswith("HTTP/1.1 404") and '"error": "no_match"' in before.stdout
    assert (await asyncio.to_thread(run, add_rule)).returncode == 0

    async def served() -> str | None:
        out = (await asyncio.to_thread(run, orders)).stdout
        return out if out.startswith("HTTP/1.1 200") else None

    after = await eventually(served, timeout=15, what="the new rule applied (the demo reloads every 5 s)")
    assert '"path": "/orders"' in after or '"path":"/orders"' in after


def test_demo_stops_cleanly_on_sigterm(demo):
    proc, _ = demo
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


def test_check_config_command_names_the_key(tmp_path):
    bad = tmp_path / "proxy.yaml"
    bad.write_text(
        "redis_url: http://nope\ncache: {mode: lenient}\nservices:\n  - {id: '1', token: abc123secret, upstream: x}\n"
    )
    out = subprocess.run([PYTHON, "-m", "proxy", "check-config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{bad}: cache.mode: must be one of strict, resilient, allow, got 'lenient'" in out.stderr
    assert "abc123secret" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


def test_serve_with_a_broken_config_exits_1_with_the_key(tmp_path):
    bad = tmp_path / "proxy.yaml"
    bad.write_text("services: []\n")
    out = subprocess.run([PYTHON, "-m", "proxy", "serve", "--config", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"{bad}: services: at least one service is required (or threescale.portal_endpoint)"


@pytest.fixture
async def served(tmp_path, emulator, upstream) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, int]]:
    port, metrics_port = free_port(), free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{metrics_port}",
        "threescale": {"backend_url": emulator.url},
        "services": [{"id": SERVICE_ID, "token": "${TEST_TOKEN}", "upstream": upstream.url}],
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "TEST_TOKEN": TOKEN, "PROXY_LOG__ACCESS_LOG": "false"}
    proc = subprocess.Popen(  # noqa: ASYNC220 - a Popen handle is what the test signals and measures
        [PYTHON, "-m", "proxy", "serve", "--config", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        await wait_ready(f"http://127.0.0.1:{metrics_port}", 20, alive=lambda: proc.poll() is None, what="serve")
        yield proc, port, metrics_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_100mb_upload_streams_through_with_bounded_memory(served, upstream):
    proc, port, _ = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/warmup", headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
        before = vm_hwm_kib(proc.pid)
        digest = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            block = os.urandom(MB)
            for _ in range(100):
                digest.update(block)
                yield block

        async with http.put(
            f"http://127.0.0.1:{port}/upload", data=body(), headers={"x-api-key": KEY, "Content-Length": str(100 * MB)}
        ) as resp:
            assert resp.status == 200
            got = await resp.json()
    assert got["body_size"] == 100 * MB and got["body_sha256"] == digest.hexdigest()
    assert got["headers"]["Content-Length"] == str(100 * MB)
    growth_mib = (vm_hwm_kib(proc.pid) - before) / 1024
    assert growth_mib < 32, f"proxy peak memory grew {growth_mib:.0f} MiB for a 100 MiB upload"


async def test_serve_stops_on_sigterm_with_exit_0(served):
    proc, port, _metrics_port = served
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/x", headers={"x-api-key": KEY}) as resp:
            assert resp.status == 200
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 15)
    assert code == 0
    stdout = proc.stdout.read().decode() if proc.stdout else ""
    assert '"msg":"threescale-proxy stopped"' in stdout
    assert '"event_loop":"uvloop"' in stdout  # event_loop: auto, and uvloop is installed


async def test_check_config_portal_validates_what_the_portal_serves(tmp_path):
    """`check-config --portal`: the portal's services converted and validated as a reload would, each
    problem named by service and key, and the access token never printed."""
    from proxy.emulator.server import Emulator

    bad_rule = {"http_method": "GET", "pattern": "/v1/(orders", "metric_system_name": "hits", "delta": 1}
    services = [
        {"id": "101", "token": "t1", "proxy": {"hosts": ["a.example.com"], "api_backend": "http://127.0.0.1:9"}},
        {
            "id": "102",
            "token": "t2",
            "proxy": {"hosts": ["b.example.com"], "api_backend": "http://127.0.0.1:9", "proxy_rules": [bad_rule]},
        },
        {"id": "103", "token": "t3", "backend_version": "oauth", "proxy": {"hosts": ["c.example.com"]}},
    ]
    emulator = Emulator({"services": services, "portal": {"access_token": "s3cr3t-portal-token"}})
    await emulator.start()
    try:
        config = tmp_path / "proxy.yaml"
        endpoint = emulator.url.replace("http://", "http://s3cr3t-portal-token@")
        config.write_text(yaml.safe_dump({"threescale": {"portal_endpoint": endpoint}}))
        proc = await asyncio.create_subprocess_exec(
            PYTHON,
            "-m",
            "proxy",
            "check-config",
            "--portal",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = (b.decode() for b in await asyncio.wait_for(proc.communicate(), 30))
        assert proc.returncode == 1
        where = f"{config} (portal {emulator.url} production)"
        assert f"{where}: proxy_configs[2] (service 103): backend_version: 'oauth' is not supported" in err
        assert f"{where}: services[1] (service 102).mapping_rules[0].pattern: is not a valid pattern" in err
        assert "s3cr3t-portal-token" not in out + err and "Traceback" not in err
    finally:
        await emulator.stop()


async def test_sighup_reloads_the_services_and_rules_and_a_broken_file_changes_nothing(served, tmp_path):
    proc, port, metrics_port = served
    path = tmp_path / "proxy.yaml"
    config = yaml.safe_load(path.read_text())

    async def status(target: str) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}{target}", headers={"x-api-key": KEY}) as resp:
                return resp.status

    assert await status("/x") == 200
    config["services"][0]["mapping_rules"] = [{"method": "GET", "pattern": "/v1", "metric": "hits"}]
    path.write_text(yaml.safe_dump(config))
    proc.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:  # no rule for /x any more
        return await status("/x") == 404

    await eventually(reloaded, what="SIGHUP reloading the rules")
    assert await status("/v1/a") == 200
    path.write_text("services: [oops\n")
    proc.send_signal(signal.SIGHUP)

    async def refused() -> bool:  # the broken file was read, and refused: the counter says so
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp:
                return 'threescale_proxy_config_reloads_total{result="invalid"} 1.0' in await resp.text()

    await eventually(refused, what="the broken file's reload counted")
    assert await status("/v1/a") == 200 and await status("/x") == 404 and proc.poll() is None
