"""Configuration: defaults, interpolation, PROXY_* overrides and errors that name the key and the file."""

import pytest

from proxy.cli import main
from proxy.config import ConfigError, load_settings, settings_from_dict

MINIMAL = {"services": [{"id": "1", "token": "tok", "upstream": "http://127.0.0.1:3000"}]}


def test_defaults_are_the_documented_ones():
    s = settings_from_dict(MINIMAL, env={})
    assert (s.listen, s.metrics_listen, s.redis_url) == ("0.0.0.0:8080", "0.0.0.0:9090", "memory://")
    assert (s.cache.mode, s.cache.ttl, s.cache.negative_ttl, s.cache.local_ttl) == ("resilient", 300, 30, 2)
    assert s.threescale.backend_url == "https://su1.3scale.net" and s.report.interval == 5
    svc = s.services[0]
    assert svc.credentials.user_key == "x-api-key" and svc.credentials.location == "header"
    assert svc.upstream_timeout == 28 and svc.strip_credentials is True
    assert [(r.method, r.pattern, r.metric, r.delta) for r in svc.mapping_rules] == [("ANY", "/", "hits", 1)]
    assert svc.error("auth_missing").status == 401 and svc.error("limits_exceeded").status == 429


def test_interpolation_and_env_overrides():
    raw = {"services": [{"id": 2555417777820, "token": "${TOKEN}", "upstream": "${UP:-http://127.0.0.1:3000}"}]}
    env = {
        "TOKEN": "s3cret",
        "PROXY_CACHE__TTL": "60",
        "PROXY_SERVICES__0__UPSTREAM_TIMEOUT": "3",
        "PROXY_REDIS_URL": "redis://r:6379/1",
        "PROXY_CACHE__MODE": "STRICT",
    }
    s = settings_from_dict(raw, env=env)
    assert s.services[0].id == "2555417777820" and s.services[0].token == "s3cret"
    assert s.services[0].upstream == "http://127.0.0.1:3000" and s.services[0].upstream_timeout == 3
    assert s.cache.ttl == 60 and s.cache.mode == "strict" and s.redis_url == "redis://r:6379/1"
    assert "s3cret" not in repr(s)


def test_errors_name_every_key_and_the_file_and_never_a_token(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listen: nowhere\n"
        "cache: {mode: sometimes, ttl: soon}\n"
        "services:\n"
        "  - id: a\n    token: hunter2-secret\n    upstream: ftp://x\n    colour: blue\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path, env={})
    text = str(err.value)
    assert f"{path}: cache.mode: must be one of strict, resilient, allow, got 'sometimes'" in text
    assert f"{path}: cache.ttl: must be a number" in text
    assert f"{path}: services[0].colour: unknown key" in text
    assert "hunter2" not in text


def test_semantic_errors(tmp_path):
    raw = {
        "listen": "nowhere",
        "services": [
            {
                "id": "a",
                "token": "t",
                "upstream": "ftp://x",
                "mapping_rules": [{"pattern": "x", "method": "FETCH"}, {"pattern": "/v1/(orders"}],
                "errors": {"auth_failed": {"status": 999}, "teapot": {"status": 418}},
            },
            {"id": "a", "token": "t", "upstream": "http://y"},
        ],
    }
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, source="f.yaml", env={})
    lines = set(str(err.value).splitlines())
    assert "f.yaml: listen: must be host:port, got 'nowhere'" in lines
    assert "f.yaml: services[0].upstream: must be an http:// or https:// URL" in lines
    assert "f.yaml: services[0].mapping_rules[0].method: must be an HTTP method or ANY, got 'FETCH'" in lines
    assert "f.yaml: services[0].mapping_rules[0].pattern: must start with /" in lines
    assert any(
        line.startswith("f.yaml: services[0].mapping_rules[1].pattern: is not a valid pattern (APIcast's regex)")
        for line in lines
    )
    assert "f.yaml: services[0].errors.auth_failed.status: must be an HTTP status code (100-599)" in lines
    assert any(line.startswith("f.yaml: services[0].errors.teapot: unknown error kind") for line in lines)
    assert "f.yaml: services[1].id: duplicate service id 'a'" in lines
    assert "f.yaml: services[0].match: is required when more than one service is configured" in lines


def test_missing_variable_and_yaml_syntax(tmp_path):
    with pytest.raises(ConfigError) as err:
        settings_from_dict({"services": [{"id": "1", "token": "${NOPE}", "upstream": "http://u"}]}, env={})
    assert "services[0].token: environment variable NOPE is not set" in str(err.value)
    bad = tmp_path / "syntax.yaml"
    bad.write_text("services: [\n  - id: 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(bad, env={})
    assert str(err.value).startswith(f"{bad}: line ")


def test_check_config_command(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("services:\n  - {id: '1', token: t, upstream: 'http://127.0.0.1:1'}\n")
    bad.write_text("services:\n  - {id: '1', token: t, upstream: 'http://127.0.0.1:1', upstream_timeout: -1}\n")
    assert main(["check-config", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: ok (1 service)\n"
    assert main(["check-config", str(good), str(bad)]) == 1
    assert capsys.readouterr().err.strip() == f"{bad}: services[0].upstream_timeout: must be greater than 0"
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: cannot read file" in capsys.readouterr().err


def test_kubernetes_service_links_are_not_overrides():
    env = {
        "PROXY_THREESCALE_PROXY_SERVICE_HOST": "10.0.0.1",
        "PROXY_THREESCALE_PROXY_SERVICE_PORT_HTTP": "80",
        "PROXY_THREESCALE_PROXY_PORT": "tcp://10.0.0.1:80",
        "PROXY_THREESCALE_PROXY_PORT_80_TCP_ADDR": "10.0.0.1",
        "PROXY_SERVICE_HOST": "10.0.0.2",
        "PROXY_PORT_9090_TCP_PROTO": "tcp",
        "PROXY_LISTEN": "127.0.0.1:8081",
    }
    assert settings_from_dict(MINIMAL, env=env).listen == "127.0.0.1:8081"
    with pytest.raises(ConfigError) as err:  # a real typo is still an error
        settings_from_dict(MINIMAL, env={"PROXY_LISTN": "x"})
    assert "<config>: listn: unknown key" in str(err.value)


def test_config_from_an_environment_variable():
    text = "services:\n  - {id: '7', token: '${T}', upstream: 'http://127.0.0.1:3000'}\nlog: {level: info}\n"
    s = load_settings(
        "env:THREESCALE_PROXY_CONFIG", env={"THREESCALE_PROXY_CONFIG": text, "T": "tok", "PROXY_LOG__LEVEL": "debug"}
    )
    assert s.services[0].token == "tok" and s.log.level == "debug"
    with pytest.raises(ConfigError) as err:
        load_settings("env:MISSING", env={})
    assert str(err.value) == "env:MISSING: environment variable MISSING is not set"


def test_reporting_bounds_are_checked_and_the_lease_must_outlast_one_post():
    ok = settings_from_dict({**MINIMAL, "threescale": {"timeout": 5}, "report": {"lease": 6.5}}, env={})
    assert ok.report.lease == 6.5 and ok.report.batch_fields == 1000 and ok.report.verify_concurrency == 10
    assert ok.redis_max_connections == 64
    raw = {
        **MINIMAL,
        "threescale": {"timeout": 5, "pool_size": 8},
        "report": {"lease": 6, "batch_fields": 0, "verify_concurrency": 9},
        "redis_max_connections": 0,
    }
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, source="f.yaml", env={})
    lines = set(str(err.value).splitlines())
    assert (
        "f.yaml: report.lease: must be more than threescale.timeout + 1 s (one POST and two Redis calls), "
        "or another replica may take over a batch whose POST is still in flight"
    ) in lines
    assert "f.yaml: report.batch_fields: must be at least 1" in lines
    assert "f.yaml: report.verify_concurrency: must not exceed threescale.pool_size" in lines
    assert "f.yaml: redis_max_connections: must be at least 1" in lines
