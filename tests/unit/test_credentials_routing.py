"""Credential extraction and service routing."""

import base64

from proxy.config import CredentialSettings, MatchSettings, ServiceSettings
from proxy.credentials import extract, names_to_strip
from proxy.routing import Router
from proxy.threescale.models import AppCredentials


def basic(user, password=""):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_user_key_from_header_is_case_insensitive_via_multidict():
    from multidict import CIMultiDict

    s = CredentialSettings(user_key="x-api-key")
    assert extract(s, CIMultiDict({"X-API-Key": "k1"}), {}) == AppCredentials(user_key="k1")
    assert extract(s, CIMultiDict({"X-API-Key": ""}), {}) is None
    assert extract(s, CIMultiDict(), {}) is None


def test_app_id_and_key_from_query():
    s = CredentialSettings(location="query", app_id="app_id", app_key="app_key")
    assert extract(s, {}, {"app_id": "a", "app_key": "k"}) == AppCredentials(app_id="a", app_key="k")
    assert extract(s, {}, {"app_id": "a"}) == AppCredentials(app_id="a", app_key=None)
    assert extract(s, {}, {"app_key": "k"}) is None
    assert names_to_strip(s) == ("app_id", "app_key")


def test_basic_authorization():
    assert extract(CredentialSettings(location="authorization"), {"Authorization": basic("uk")}, {}) == AppCredentials(
        user_key="uk"
    )
    s = CredentialSettings(location="authorization", app_id="x", app_key="y")
    assert extract(s, {"Authorization": basic("id", "secret")}, {}) == AppCredentials(app_id="id", app_key="secret")
    assert extract(s, {"Authorization": "Basic !!!"}, {}) is None
    assert extract(s, {"Authorization": "Bearer abc"}, {}) is None


def svc(sid, **match):
    return ServiceSettings(id=sid, token="t", upstream="http://u", match=MatchSettings(**match) if match else None)


def test_router_longest_prefix_then_host_and_header():
    router = Router(
        [
            svc("root", path_prefix="/"),
            svc("v1", path_prefix="/v1"),
            svc("orders", path_prefix="/v1", header={"X-Service": "orders"}, host="api.example.com"),
        ]
    )
    assert router.route("api.example.com:443", "/v1/x", {"X-Service": "orders"}).id == "orders"
    assert router.route("other.example.com", "/v1/x", {"X-Service": "orders"}).id == "v1"
    assert router.route("api.example.com", "/v10", {}).id == "root"


def test_router_wildcard_host_and_no_match():
    router = Router([svc("a", host="*.example.com")])
    assert router.route("eu.api.example.com", "/", {}).id == "a"
    assert router.route("example.com", "/", {}) is None
    assert router.route(None, "/", {}) is None


def test_malformed_credentials_are_recognised():
    from proxy.credentials import well_formed

    assert well_formed(AppCredentials(user_key="abc-123_XYZ"))
    assert well_formed(AppCredentials(app_id="a1", app_key="k"))
    assert not well_formed(AppCredentials(user_key="\udcff\udcfe"))  # undecodable bytes, as aiohttp keeps them
    assert not well_formed(AppCredentials(user_key="a\x00b"))
    assert not well_formed(AppCredentials(app_id="a", app_key="x" * 1025))
