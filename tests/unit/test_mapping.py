"""Mapping rules with 3scale's semantics."""

import pytest

from proxy.config import MappingRuleSettings as Rule
from proxy.mapping import Mapper


def usage(rules, method, path, query=None):
    return Mapper(rules).usage(method, path, query or {})


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
    assert usage(rules, "GET", "/search", {"type": "book", "q": "x"}) == {"books": 1}
    assert usage(rules, "GET", "/search", {"type": "film", "q": "x"}) is None
    assert usage(rules, "GET", "/search", {"type": "book"}) is None


def test_regex_characters_in_patterns_are_literal():
    rules = [Rule(pattern="/a.b+c$", metric="m")]
    assert usage(rules, "GET", "/a.b+c") == {"m": 1}
    assert usage(rules, "GET", "/aXbbc") is None


@pytest.mark.parametrize("delta", [0, 5])
def test_delta_is_used(delta):
    assert usage([Rule(pattern="/", metric="hits", delta=delta)], "GET", "/") == {"hits": delta}


def test_mapper_says_whether_it_reads_the_query():
    assert Mapper([Rule(pattern="/search?q={q}")]).needs_query is True
    assert Mapper([Rule(pattern="/search"), Rule(pattern="/v1/{id}$")]).needs_query is False
