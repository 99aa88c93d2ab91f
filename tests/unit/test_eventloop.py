"""`event_loop`: the loop a proxy process runs on, and the configuration key that chooses it."""

import sys

import pytest

from proxy.config import ConfigError, settings_from_dict
from proxy.eventloop import resolve, run, running_loop_kind


async def kind() -> str:
    return running_loop_kind()


@pytest.mark.parametrize(("choice", "expected"), [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")])
def test_run_starts_the_chosen_loop(choice, expected):
    assert run(kind(), choice) == expected  # uvloop is a dependency on Linux, so auto means uvloop here
    assert resolve(choice) == expected


def service() -> dict[str, object]:
    return {"id": "1", "token": "t", "upstream": "http://127.0.0.1:9"}


def test_event_loop_defaults_to_auto_and_refuses_other_values():
    assert settings_from_dict({"services": [service()]}).event_loop == "auto"
    assert settings_from_dict({"services": [service()], "event_loop": "asyncio"}).event_loop == "asyncio"
    with pytest.raises(ConfigError) as failed:
        settings_from_dict({"services": [service()], "event_loop": "trio"})
    assert "event_loop" in str(failed.value)


def test_without_uvloop_auto_runs_asyncio_and_uvloop_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what the import system does for a missing module
    assert resolve("auto") == "asyncio"
    assert run(kind(), "auto") == "asyncio"
    with pytest.raises(ConfigError) as failed:
        settings_from_dict({"services": [service()], "event_loop": "uvloop"})
    assert "event_loop: uvloop is not installed" in str(failed.value)
