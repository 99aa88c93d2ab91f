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
    assert extract(s, CIMultiDict({"X-API-Key": "k1"}), "") == AppCredentials(user_key="k1")
    assert extract(s, CIMultiDict(), "") is None


def test_a_present_but_empty_credential_goes_to_3scale():
    """APIcast sends an empty value on (Lua's "" is true): 3scale answers it with 403; only absent is 401."""
    from multidict import CIMultiDict

    assert extract(CredentialSettings(user_key="x-api-key"), CIMultiDict({"X-API-Key": ""}), "") == AppCredentials(
        user_key=""
    )
    s = CredentialSettings(location="query", user_key="user_key")
    assert extract(s, {}, "user_key=") == AppCredentials(user_key="")
    assert extract(CredentialSettings(location="authorization"), {"Authorization": basic("")}, "") == AppCredentials(
        user_key=""
    )


def test_app_id_and_key_from_query():
    s = CredentialSettings(location="query", app_id="app_id", app_key="app_key")
    assert extract(s, {}, "app_id=a&app_key=k") == AppCredentials(app_id="a", app_key="k")
    assert extract(s, {}, "app_id=a") == AppCredentials(app_id="a", app_key=None)
    assert extract(s, {}, "app_key=k") is None
    assert names_to_strip(s) == ("app_id", "app_key")


def test_query_credentials_are_read_as_nginx_reads_arg_variables():
    """`$arg_user_key`: the first occurrence, the name compared ignoring case, the value as sent."""
    s = CredentialSettings(location="query", user_key="user_key")
    assert extract(s, {}, "x=1&USER_KEY=first&user_key=second") == AppCredentials(user_key="first")
    assert extract(s, {}, "user_key=a%2Bb+c") == AppCredentials(user_key="a%2Bb+c")
    assert extract(s, {}, "user_key") is None  # no `=`: no value
    assert extract(s, {}, "my_user_key=x") is None


def test_basic_authorization():
    assert extract(CredentialSettings(location="authorization"), {"Authorization": basic("uk")}, "") == AppCredentials(
        user_key="uk"
    )
    s = CredentialSettings(location="authorization", app_id="x", app_key="y")
    assert extract(s, {"Authorization": basic("id", "secret")}, "") == AppCredentials(app_id="id", app_key="secret")
    assert extract(s, {"Authorization": "Basic !!!"}, "") is None


def test_basic_authorization_splits_at_the_last_colon_and_needs_one():
    v1 = CredentialSettings(location="authorization")
    v2 = CredentialSettings(location="authorization", app_id="x", app_key="y")
    assert extract(v2, {"Authorization": basic("a:b", "c")}, "") == AppCredentials(app_id="a:b", app_key="c")
    no_colon = "Basic " + base64.b64encode(b"justakey").decode()
    assert extract(v1, {"Authorization": no_colon}, "") is None
    assert extract(v2, {"Authorization": no_colon}, "") is None
    unpadded = "Basic " + base64.b64encode(b"uk:").decode().rstrip("=")  # ngx.decode_base64 takes it
    assert extract(v1, {"Authorization": unpadded}, "") == AppCredentials(user_key="uk")
    assert extract(v1, {"Authorization": basic("", "pw")}, "") == AppCredentials(user_key="")  # "" is a user id


def test_bearer_token_is_the_user_key_or_the_app_id():
    v1 = CredentialSettings(location="authorization")
    v2 = CredentialSettings(location="authorization", app_id="x", app_key="y")
    assert extract(v1, {"Authorization": "Bearer tok-123"}, "") == AppCredentials(user_key="tok-123")
    assert extract(v2, {"Authorization": "Bearer tok-123"}, "") == AppCredentials(app_id="tok-123", app_key=None)
    assert extract(v1, {"Authorization": "Bearer"}, "") == AppCredentials(user_key="")
    # schemes are compared as APIcast compares them: as written
    assert extract(v1, {"Authorization": "bearer tok-123"}, "") is None
    assert extract(v1, {"Authorization": "Digest x"}, "") is None
    assert extract(v1, {}, "") is None


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
