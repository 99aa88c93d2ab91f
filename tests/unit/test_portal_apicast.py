"""APIcast's service configuration (the portal's proxy config `content`, APIcast's JSON file) as services."""

import json

import pytest

from proxy.config import ConfigError, settings_from_dict
from proxy.portal.apicast import entries_from_document


def content(sid=2555417777820, **proxy):
    """A proxy config `content` shaped as the 3scale admin portal serves it (porta's defaults included)."""
    base = {
        "api_backend": "https://api.example.com:443",
        "hosts": ["api-2555417777820.staging.gw.apicast.io", "api.example.com"],
        "credentials_location": "query",
        "auth_user_key": "user_key",
        "auth_app_id": "app_id",
        "auth_app_key": "app_key",
        "error_auth_failed": "Authentication failed",
        "error_status_auth_failed": 403,
        "error_headers_auth_failed": "text/plain; charset=us-ascii",
        "error_auth_missing": "Authentication parameters missing",
        "error_status_auth_missing": 403,
        "error_headers_auth_missing": "text/plain; charset=us-ascii",
        "error_no_match": "No Mapping Rule matched",
        "error_status_no_match": 404,
        "error_headers_no_match": "text/plain; charset=us-ascii",
        "error_limits_exceeded": "Usage limit exceeded",
        "error_status_limits_exceeded": 429,
        "error_headers_limits_exceeded": "text/plain; charset=us-ascii",
        "backend": {"endpoint": "https://su1.3scale.net", "host": "su1.3scale.net"},
        "policy_chain": [{"name": "apicast", "version": "builtin", "configuration": {}}],
        "proxy_rules": [
            {
                "id": 2,
                "http_method": "GET",
                "pattern": "/v1/orders/{id}$",
                "metric_system_name": "orders",
                "delta": 2,
                "parameters": ["id"],
                "querystring_parameters": {},
                "position": 2,
                "last": True,
            },
            {
                "id": 1,
                "http_method": "GET",
                "pattern": "/",
                "metric_system_name": "hits",
                "delta": 1,
                "parameters": [],
                "querystring_parameters": {},
                "position": 1,
                "last": False,
            },
        ],
    }
    base.update(proxy)
    return {
        "id": sid,
        "backend_version": "1",
        "backend_authentication_type": "service_token",
        "backend_authentication_value": "svc-token-from-portal",
        "proxy": base,
    }


def test_a_portal_service_becomes_a_service_entry():
    entries, problems = entries_from_document({"services": [content()]})
    assert problems == []
    (entry,) = entries
    assert entry["id"] == "2555417777820" and entry["token"] == "svc-token-from-portal"
    assert entry["upstream"] == "https://api.example.com:443"
    assert entry["match"] == {"hosts": ["api-2555417777820.staging.gw.apicast.io", "api.example.com"]}
    assert entry["credentials"] == {"location": "query", "user_key": "user_key"}
    assert [r["pattern"] for r in entry["mapping_rules"]] == ["/", "/v1/orders/{id}$"]  # by position
    assert entry["mapping_rules"][1] == {
        "method": "GET",
        "pattern": "/v1/orders/{id}$",
        "metric": "orders",
        "delta": 2,
        "last": True,
    }
    assert entry["errors"]["auth_missing"] == {
        "status": 403,
        "message": "Authentication parameters missing",
        "content_type": "text/plain; charset=us-ascii",
    }


def test_app_id_services_and_header_credentials():
    c = content(credentials_location="headers", auth_app_id="X-App-Id", auth_app_key="X-App-Key")
    c["backend_version"] = "2"
    (entry,), _ = entries_from_document({"services": [c]})
    assert entry["credentials"] == {"location": "header", "app_id": "X-App-Id", "app_key": "X-App-Key"}


def test_a_service_that_cannot_be_served_is_named_and_the_others_stay():
    oidc = content(sid=7)
    oidc["backend_version"] = "oauth"
    provider = content(sid=8)
    provider["backend_authentication_type"] = "provider_key"
    entries, problems = entries_from_document({"services": [oidc, content(sid=9), provider, "junk"]})
    assert [e["id"] for e in entries] == ["9"]
    assert [key for key, _ in problems] == ["services[0] (service 7)", "services[2] (service 8)", "services[3]"]
    assert "backend_version: 'oauth' is not supported" in problems[0][1]
    assert entries_from_document({"proxy_configs": []})[1][0][0] == "services"


def yaml_with_file(tmp_path, document, **threescale):
    path = tmp_path / "apicast-config.json"
    path.write_text(json.dumps(document))
    return {"threescale": {"config_file": str(path), **threescale}}, str(path)


def test_apicasts_file_is_read_and_a_yaml_entry_overrides_single_fields(tmp_path):
    raw, _ = yaml_with_file(tmp_path, {"services": [content(), content(sid=42)]})
    raw["services"] = [
        {"id": "2555417777820", "upstream": "http://127.0.0.1:3000", "credentials": {"user_key": "x-key"}},
        {"id": "77", "token": "t", "upstream": "http://127.0.0.1:4000", "match": {"host": "other.example.com"}},
    ]
    settings = settings_from_dict(raw, source="proxy.yaml", env={})
    first, second, only_yaml = settings.services
    assert first.upstream == "http://127.0.0.1:3000"  # the sidecar's app, not the portal's api_backend
    assert first.credentials.location == "query" and first.credentials.user_key == "x-key"
    assert first.token == "svc-token-from-portal" and len(first.mapping_rules) == 2
    assert first.error("no_match").content_type == "text/plain; charset=us-ascii"
    assert second.id == "42" and second.upstream == "https://api.example.com:443"
    assert only_yaml.id == "77"


def test_the_file_can_come_from_apicasts_variable(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"services": [content()]}))
    settings = settings_from_dict({}, source="<environment>", env={"THREESCALE_CONFIG_FILE": str(path)})
    assert [s.id for s in settings.services] == ["2555417777820"]
    assert settings.threescale.config_file == str(path)


def test_a_bad_file_is_a_config_error_naming_the_file_and_key(tmp_path):
    raw, path = yaml_with_file(
        tmp_path,
        {"services": [content(proxy_rules=[{"pattern": "/a(b", "http_method": "GET", "metric_system_name": "hits"}])]},
    )
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, source="proxy.yaml", env={})
    assert str(err.value).startswith(f"proxy.yaml + {path}: services[0].mapping_rules[0].pattern: is not a valid")
    (tmp_path / "apicast-config.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        settings_from_dict(raw, source="proxy.yaml", env={})
    assert f"proxy.yaml + {path}: threescale.config_file: is not JSON" in str(err.value)
    assert "svc-token-from-portal" not in str(err.value)


def test_the_portals_backend_endpoint_is_the_services_unless_backend_url_is_given(tmp_path):
    raw, _ = yaml_with_file(tmp_path, {"services": [content(backend={"endpoint": "http://backend-listener:3000"})]})
    (service,) = settings_from_dict(raw, source="proxy.yaml", env={}).services
    assert service.backend_url == "http://backend-listener:3000"
    raw["threescale"]["backend_url"] = "http://127.0.0.1:3001"
    (service,) = settings_from_dict(raw, source="proxy.yaml", env={}).services
    assert service.backend_url is None  # threescale.backend_url serves it, as BACKEND_ENDPOINT_OVERRIDE does
    del raw["threescale"]["backend_url"]
    settings = settings_from_dict(raw, source="proxy.yaml", env={"BACKEND_ENDPOINT_OVERRIDE": "http://10.0.0.1:3000"})
    assert settings.threescale.backend_url == "http://10.0.0.1:3000" and settings.services[0].backend_url is None


def test_a_portal_endpoint_is_checked_without_showing_its_token():
    for endpoint, message in [
        ("ftp://tok-123@x", "must be an http:// or https:// URL"),
        ("https://tok-123@x.example.com/master/api", "must have no path"),
    ]:
        with pytest.raises(ConfigError) as err:
            settings_from_dict({"threescale": {"portal_endpoint": endpoint}}, source="p.yaml", env={})
        assert f"p.yaml: threescale.portal_endpoint: {message}" in str(err.value) and "tok-123" not in str(err.value)
