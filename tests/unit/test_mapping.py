"""Mapping rules with 3scale's semantics: APIcast's own (gateway/src/apicast/mapping_rule.lua and its specs,
t/apicast-mapping-rules.t), matched against the request target as APIcast sees it."""

import pytest

from proxy.config import MappingRuleSettings as Rule
from proxy.mapping import Mapper, query_args
from proxy.paths import BadPath, mapping_uri


def usage(rules, method, target):
    """The usage of a request for `target` (path and query as sent), as the pipeline computes it."""
    path, _, query = target.partition("?")
    return Mapper(rules).usage(method, mapping_uri(path), query_args(query))


def test_placeholder_matches_one_segment_only():
    rules = [Rule(pattern="/v1/orders/{id}$", method="GET", metric="orders")]
    assert usage(rules, "GET", "/v1/orders/42") == {"orders": 1}
    assert usage(rules, "GET", "/v1/orders/42/items") is None
    assert usage(rules, "GET", "/v1/orders/") is None


def test_without_dollar_a_rule_is_a_prefix():
    rules = [Rule(pattern="/v1/orders", method="GET", metric="orders")]
    assert usage(rules, "GET", "/v1/orders/42/items") == {"orders": 1}
    assert usage(rules, "GET", "/v1/order") is None


def test_method_must_match_unless_any():
    rules = [Rule(pattern="/", method="POST", metric="writes"), Rule(pattern="/", method="ANY", metric="hits")]
    assert usage(rules, "GET", "/x") == {"hits": 1}
    assert usage(rules, "post", "/x") == {"writes": 1, "hits": 1}


def test_all_matching_rules_add_up_until_last():
    rules = [
        Rule(pattern="/", metric="hits", delta=1),
        Rule(pattern="/search", metric="hits", delta=2),
        Rule(pattern="/search", metric="search", delta=1, last=True),
        Rule(pattern="/", metric="never", delta=1),
    ]
    assert usage(rules, "GET", "/search") == {"hits": 3, "search": 1}
    assert usage(rules, "GET", "/other") == {"hits": 1, "never": 1}


def test_query_parameters_in_a_pattern_must_match():
    rules = [Rule(pattern="/search?type=book&q={term}", metric="books")]
    assert usage(rules, "GET", "/search?type=book&q=x") == {"books": 1}
    assert usage(rules, "GET", "/search?type=film&q=x") is None
    assert usage(rules, "GET", "/search?type=book") is None


def test_a_pattern_is_apicasts_regex_with_dots_literal():
    """APIcast escapes only `.` (and turns `{name}` into a character class): `+`, `*`, `(...)` keep their
    regex meaning, as they do there."""
    rules = [Rule(pattern="/a.b+c$", metric="m")]
    assert usage(rules, "GET", "/a.bbc") == {"m": 1}
    assert usage(rules, "GET", "/a.b+c") is None
    assert usage(rules, "GET", "/aXbbc") is None
    assert usage([Rule(pattern="/v(1|2)/x$", metric="m")], "GET", "/v2/x") == {"m": 1}


def test_an_invalid_regex_never_matches():
    rules = [Rule(pattern="/a(b", metric="broken"), Rule(pattern="/", metric="hits")]
    assert usage(rules, "GET", "/a(b") == {"hits": 1}


def test_an_escaped_space_in_a_pattern_matches_the_escaped_request():
    """t/apicast-mapping-rules.t TEST 6: APIcast matches escape_uri(ngx.var.uri), so `%20` is in both."""
    rules = [Rule(pattern="/foo%20/bar/", metric="m")]
    assert usage(rules, "GET", "/foo%20/bar/") == {"m": 1}
    assert usage(rules, "GET", "/foo%20/bar/x") == {"m": 1}


def test_dollar_anchors_the_real_end():
    rules = [Rule(pattern="/foo$", metric="m")]
    assert usage(rules, "GET", "/foo") == {"m": 1}
    assert usage(rules, "GET", "/foo%0A") is None  # a newline before the end is not the end
    assert usage(rules, "GET", "/foo%0a") is None


@pytest.mark.parametrize(
    ("pattern", "target"),
    [
        ("/foo//bar", "/foo/bar"),
        ("/foo///bar", "/foo/bar"),
        ("/foo/bar///", "/foo/bar/"),
        ("///foo///bar///", "/foo/bar/"),
        ("/foo/bar$", "//foo///bar"),  # nginx merges the request's slashes too
    ],
)
def test_repeated_slashes_are_one(pattern, target):
    assert usage([Rule(pattern=pattern, metric="m")], "GET", target) == {"m": 1}


def test_dot_segments_are_resolved_before_matching():
    rules = [Rule(pattern="/v1/public", metric="public"), Rule(pattern="/v1/expensive", metric="expensive")]
    assert usage(rules, "GET", "/v1/public/../expensive") == {"expensive": 1}
    assert usage(rules, "GET", "/v1/./public/x") == {"public": 1}
    assert usage(rules, "GET", "/v1/%2e%2e/v1/expensive") == {"expensive": 1}  # decoded dots are dots
    assert usage(rules, "GET", "/v1/public/x/..") == {"public": 1}


@pytest.mark.parametrize("target", ["/..", "/a/../..", "/a%zz", "/a%2"])
def test_a_path_nginx_would_refuse_is_a_bad_path(target):
    with pytest.raises(BadPath):
        mapping_uri(target)


def test_a_placeholder_matches_apicasts_character_class():
    rules = [Rule(pattern="/foo/{wildcard}/bar", metric="m")]
    for ok in ("/foo/a@b/bar", "/foo/a:b/bar", "/foo/a%25b/bar", "/foo/a~b!c$d&e'(f)*+,;=/bar", "/foo/%C3%A9/bar"):
        assert usage(rules, "GET", ok) == {"m": 1}, ok  # é is re-escaped to %C3%A9: in the class
    for no in ('/foo/a"b/bar', "/foo/a|b/bar", "/foo/a^b/bar", "/foo/a%22b/bar", "/foo/a%7Cb/bar"):
        assert usage(rules, "GET", no) is None, no  # outside the class, raw or decoded (not re-escaped)


def test_a_repeated_query_argument_is_compared_on_its_last_value():
    rules = [Rule(pattern="/search?type=book", metric="books")]
    assert usage(rules, "GET", "/search?type=film&type=book") == {"books": 1}
    assert usage(rules, "GET", "/search?type=book&type=film") is None


def test_query_arguments_are_decoded_as_nginx_decodes_them():
    rules = [Rule(pattern="/s?q=a b&flag={f}", metric="m")]
    assert usage(rules, "GET", "/s?q=a+b&flag") == {"m": 1}  # `+` is a space; a bare name is present
    assert usage(rules, "GET", "/s?q=a%20b&flag=") == {"m": 1}
    assert usage(rules, "GET", "/s?Q=a+b&flag=1") is None  # names are case-sensitive
    assert usage([Rule(pattern="/s?q=", metric="m")], "GET", "/s?q") is None  # a bare name has no value
    assert usage([Rule(pattern="/s?q=", metric="m")], "GET", "/s?q=") == {"m": 1}


def test_only_the_first_hundred_arguments_are_read():
    """nginx's ngx.req.get_uri_args() reads at most 100 arguments; APIcast matches on those."""
    rules = [Rule(pattern="/s?last=yes", metric="m")]
    filler = "&".join(f"a{i}=1" for i in range(100))
    assert usage(rules, "GET", f"/s?{filler}&last=yes") is None
    assert usage(rules, "GET", f"/s?last=yes&{filler}") == {"m": 1}


@pytest.mark.parametrize("delta", [0, 5])
def test_delta_is_used(delta):
    assert usage([Rule(pattern="/", metric="hits", delta=delta)], "GET", "/") == {"hits": delta}


def test_mapper_says_whether_it_reads_the_query():
    assert Mapper([Rule(pattern="/search?q={q}")]).needs_query is True
    assert Mapper([Rule(pattern="/search"), Rule(pattern="/v1/{id}$")]).needs_query is False
