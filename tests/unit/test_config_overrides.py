"""PROXY_* overrides: every bad one is a ConfigError that names the variable (never a traceback, never a secret)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml

from proxy.cli import main
from proxy.config import ConfigError, Settings, load_settings, settings_from_dict

SECRET = "hunter2-do-not-print"


def raw(**service: Any) -> dict[str, Any]:
    """One service without mapping_rules (so the schema's default list is used), plus a cache section."""
    return {
        "services": [{"id": "1", "token": SECRET, "upstream": "http://127.0.0.1:3000", **service}],
        "cache": {"ttl": 60},
    }


def problem(env: dict[str, str], document: dict[str, Any] | None = None) -> str:
    """The ConfigError text for `document` (default `raw()`) under `env`; fails on any other exception."""
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw() if document is None else document, source="f.yaml", env=env)
    text = str(err.value)
    assert SECRET not in text
    return text


def load(env: dict[str, str], document: dict[str, Any] | None = None) -> Settings:
    return settings_from_dict(raw() if document is None else document, source="f.yaml", env=env)


# ------------------------------------------------------------------------------------------- the defect


def test_unparsable_yaml_in_a_list_item_is_a_config_error_naming_the_variable():
    text = problem({"PROXY_SERVICES__0": "[unclosed"})
    assert text.startswith("f.yaml: PROXY_SERVICES__0: not valid YAML: line 1, column 10: ")
    assert len(text.splitlines()) == 1


def test_a_yaml_error_in_a_secret_item_does_not_echo_it():
    text = problem({"PROXY_SERVICES__0": f"{{id: '1', token: {SECRET}, upstream: ["})
    assert text.startswith("f.yaml: PROXY_SERVICES__0: not valid YAML: ")


def test_an_override_below_a_defaulted_list_says_the_list_is_a_default():
    text = problem({"PROXY_SERVICES__0__MAPPING_RULES__0__DELTA": "2"})
    assert text == (
        "f.yaml: PROXY_SERVICES__0__MAPPING_RULES__0__DELTA: services[0].mapping_rules is not in the file "
        "(its default is used), so it has no item 0 to override; write it in the file, or set the whole list "
        "with PROXY_SERVICES__0__MAPPING_RULES='[...]'"
    )


def test_an_override_below_a_given_list_still_works():
    document = raw(mapping_rules=[{"pattern": "/", "metric": "hits"}, {"pattern": "/a", "metric": "a"}])
    s = load({"PROXY_SERVICES__0__MAPPING_RULES__1__DELTA": "2", "PROXY_SERVICES__0__TOKEN": "t2"}, document)
    assert [(r.pattern, r.metric, r.delta) for r in s.services[0].mapping_rules] == [("/", "hits", 1), ("/a", "a", 2)]
    assert s.services[0].token == "t2"


def test_a_whole_list_or_item_can_be_set_as_yaml():
    s = load({"PROXY_SERVICES__0__MAPPING_RULES": "[{pattern: /v1, metric: v1, delta: 3}]"})
    assert [(r.pattern, r.metric, r.delta) for r in s.services[0].mapping_rules] == [("/v1", "v1", 3)]
    s = load({"PROXY_SERVICES__0": "{id: '9', token: t, upstream: 'http://u:1'}", "PROXY_SERVICES__0__TOKEN": "t3"})
    assert (s.services[0].id, s.services[0].token, s.services[0].upstream) == ("9", "t3", "http://u:1")


# ------------------------------------------------------------------------------- every other bad form


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PROXY_SERVICES__X__TOKEN", "t", "services is a list: 'x' must be an item number (0 to 0)"),
        ("PROXY_SERVICES__3__TOKEN", "t", "services has 1 item in the file, so it has no item 3 to override"),
        ("PROXY_SERVICES__-1__TOKEN", "t", "services is a list: '-1' must be an item number (0 to 0)"),
        ("PROXY_CACHE__TTL__X", "1", "cache.ttl is a single value, not a mapping: nothing below it to set"),
        ("PROXY_LOG__LEVEL__X", "1", "log.level is a single value, not a mapping: nothing below it to set"),
        ("PROXY_SERVICES__0__TOKEN__X", SECRET, "services[0].token is a single value, not a mapping: nothing below"),
        ("PROXY_CACHE____TTL", "1", "empty part in the name (a `__` too many?)"),
        ("PROXY_CACHE__", "1", "empty part in the name (a `__` too many?)"),
        ("PROXY___CACHE", "1", "empty part in the name (a `__` too many?)"),
        ("PROXY_", "1", "empty part in the name (a `__` too many?)"),
        ("PROXY_CACHE__TTL", "[1, 2]", "cache.ttl: must be a number, got '[1, 2]' (set by PROXY_CACHE__TTL)"),
        ("PROXY_CACHE__TTL", "soon", "cache.ttl: must be a number, got 'soon' (set by PROXY_CACHE__TTL)"),
        ("PROXY_LOG__ACCESS_LOG", "{a: 1}", "log.access_log: must be true or false, got '{a: 1}'"),
        ("PROXY_CACHE__0", "1", "cache.0: unknown key (set by PROXY_CACHE__0)"),
        ("PROXY_SERVICES__0__CREDENTIALS__0", "x", "services[0].credentials.0: unknown key"),
        ("PROXY_CACHE", "5", "cache: must be a mapping (set by PROXY_CACHE)"),
        ("PROXY_CACHE", "{ttl: [", "PROXY_CACHE: not valid YAML: line 1, column 8: "),
        ("PROXY_SERVICES__0", "7", "services[0]: must be a mapping (set by PROXY_SERVICES__0)"),
        ("PROXY_SERVICES__0", "!!python/object:os.system x", "PROXY_SERVICES__0: not valid YAML: "),
        (
            "PROXY_SERVICES",
            "[]",
            "services: at least one service is required (or threescale.portal_endpoint) (set by PROXY_SERVICES)",
        ),
        ("PROXY_SERVICES__0", "[" * 5000, "PROXY_SERVICES__0: not valid YAML: nested too deeply"),
        ("PROXY_SERVICES__0", "\x07", "PROXY_SERVICES__0: not valid YAML: character 1: special characters are not"),
    ],
)
def test_every_bad_override_names_the_variable(name, value, message):
    text = problem({name: value})
    assert message in text, text
    assert name in text and "Traceback" not in text


def test_an_override_through_a_value_that_is_not_a_mapping_in_the_file():
    document = {**raw(), "cache": 5}
    assert "f.yaml: PROXY_CACHE__TTL: cache is not a mapping in the file" in problem(
        {"PROXY_CACHE__TTL": "1"}, document
    )
    document = {**raw(), "services": {"a": 1}}
    text = problem({"PROXY_SERVICES__0__ID": "1"}, document)
    assert "f.yaml: PROXY_SERVICES__0__ID: services is not a list in the file" in text


def test_a_secret_value_is_never_echoed_whatever_goes_wrong():
    env = {
        "PROXY_SERVICES__0__TOKEN__X": SECRET,
        "PROXY_SERVICES__0__TOKN": SECRET,
        "PROXY_SERVICES__5__TOKEN": SECRET,
    }
    text = problem(env)
    assert len(text.splitlines()) == 3
    assert "services[0].tokn: unknown key (did you mean token?) (set by PROXY_SERVICES__0__TOKN)" in text


# ------------------------------------------------------------------------------------ good overrides


def test_string_values_are_taken_as_written_not_as_yaml():
    s = load({"PROXY_SERVICES__0__ID": "0123", "PROXY_SERVICES__0__TOKEN": "yes", "PROXY_LISTEN": "[::1]:8080"})
    assert (s.services[0].id, s.services[0].token, s.listen) == ("0123", "yes", "[::1]:8080")


def test_numbers_booleans_and_null_keep_their_yaml_meaning():
    s = load(
        {
            "PROXY_CACHE__TTL": "90",
            "PROXY_REPORT__MAX_BATCH": "0100",
            "PROXY_LOG__ACCESS_LOG": "off",
            "PROXY_GATEWAY__STAGE_HEADER": "",
            "PROXY_GATEWAY__REQUEST_ID_HEADER": "null",
        }
    )
    assert (s.cache.ttl, s.report.max_batch, s.log.access_log) == (90.0, 100, False)
    assert (s.gateway.stage_header, s.gateway.request_id_header) == (None, None)


def test_an_override_below_a_null_or_absent_section_creates_it():
    s = load({"PROXY_SERVICES__0__MATCH__HOST": "api.example.com"}, raw(match=None))
    assert s.services[0].match is not None and s.services[0].match.host == "api.example.com"
    s = load({"PROXY_SERVICES__0__MATCH__HEADER__X_TENANT": "a", "PROXY_SHUTDOWN__TIMEOUT": "30"})
    assert s.services[0].match is not None and s.services[0].match.header == {"x_tenant": "a"}
    assert s.shutdown.timeout == 30


# --------------------------------------------------------------------------- load_settings and the CLI


def test_load_settings_and_check_config_report_the_variable(tmp_path, monkeypatch, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw()))
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={"PROXY_SERVICES__0": "[unclosed"})
    assert str(err.value).startswith(f"{path}: PROXY_SERVICES__0: not valid YAML: line 1, column 10: ")
    monkeypatch.setenv("PROXY_SERVICES__0__MAPPING_RULES__0__DELTA", "2")
    assert main(["check-config", str(path)]) == 1
    err_text = capsys.readouterr().err
    assert err_text.startswith(f"{path}: PROXY_SERVICES__0__MAPPING_RULES__0__DELTA: services[0].mapping_rules ")
    assert SECRET not in err_text


def test_the_check_config_command_prints_no_traceback(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(raw()))
    env = {**os.environ, "PROXY_SERVICES__0": "[unclosed", "PROXY_CACHE____TTL": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        f"{path}: PROXY_CACHE____TTL: empty part in the name (a `__` too many?)",
        f"{path}: PROXY_SERVICES__0: not valid YAML: line 1, column 10: expected ',' or ']', but got '<stream end>'",
    ]


def test_a_file_nested_too_deeply_is_a_config_error(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000)
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    assert str(err.value) == f"{path}: nested too deeply"
