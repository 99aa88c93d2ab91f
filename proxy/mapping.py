"""Step 3: map method + path + query to 3scale usage with the service's mapping rules, as APIcast does.

A pattern is APIcast's regex (gateway/src/apicast/mapping_rule.lua): repeated slashes are one, `{name}` is
one or more of APIcast's path characters, `.` is literal, the rest keeps its regex meaning (a trailing `$`
anchors the end; without it a rule is a prefix). It is matched against the path as APIcast sees it
(paths.mapping_uri). Query parameters in a pattern must be present, and equal unless they hold a `{name}`,
compared on their last value as nginx parses arguments. Every matching rule adds its delta unless an earlier
matching rule has `last: true`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from .config import MappingRuleSettings
from .paths import pattern_regex

log = logging.getLogger(__name__)

_VARIABLE_VALUE = re.compile(r"\{[-\w_]+\}")  # a query value with one of these only has to be present
MAX_ARGS = 100  # nginx's ngx.req.get_uri_args() default: arguments beyond it are not read

Args = Mapping[str, "str | bool"]
"""Query arguments by name: the last value given, or True for a name without `=` (as nginx's Lua API)."""


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A mapping rule ready to test: a path regex (None: invalid, never matches) and required arguments."""

    method: str
    path: re.Pattern[str] | None
    query: tuple[tuple[str, str | None], ...]  # (name, value) or (name, None): present with any value
    metric: str
    delta: int
    last: bool

    def matches(self, method: str, uri: str, args: Args) -> bool:
        """Method (or ANY), path regex, then each required query parameter."""
        if self.method != "ANY" and self.method != method:
            return False
        if self.path is None or self.path.match(uri) is None:
            return False
        for name, value in self.query:
            got = args.get(name)
            if value is None:
                if got is None:
                    return False
            elif got != value:
                return False
        return True


def compile_rule(rule: MappingRuleSettings) -> CompiledRule:
    """Turn a configured pattern like `/v1/orders/{id}$?fields={f}` into a CompiledRule."""
    try:
        regex: re.Pattern[str] | None = re.compile(pattern_regex(rule.pattern), re.ASCII)
    except re.error as exc:  # APIcast logs the failed match and the rule never matches: the same here
        fields = {"pattern": rule.pattern, "error": str(exc)}
        log.warning("a mapping rule's pattern is not a valid regex: it never matches", extra={"fields": fields})
        regex = None
    query: list[tuple[str, str | None]] = []
    for name, value in query_args(rule.pattern.partition("?")[2]).items():
        variable = value is True or _VARIABLE_VALUE.search(str(value)) is not None
        query.append((name, None if variable else str(value)))
    return CompiledRule(
        method=rule.method.upper(),
        path=regex,
        query=tuple(query),
        metric=rule.metric,
        delta=rule.delta,
        last=rule.last,
    )


def query_args(query: str) -> dict[str, str | bool]:
    """A query string as nginx's Lua API parses it: `+` is a space, names and values percent-decoded,
    a name without `=` is True, an empty name is skipped, at most MAX_ARGS arguments, the last one wins."""
    args: dict[str, str | bool] = {}
    if not query:
        return args
    for count, part in enumerate(query.split("&")):
        if count >= MAX_ARGS:
            break
        name, eq, value = part.partition("=")
        key = _decode(name)
        if key:
            args[key] = _decode(value) if eq else True
    return args


def _decode(text: str) -> str:
    if "%" not in text and "+" not in text:
        return text
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "surrogateescape")


class Mapper:
    """A service's compiled mapping rules, in configuration order."""

    def __init__(self, rules: Sequence[MappingRuleSettings]) -> None:
        self._rules = tuple(compile_rule(r) for r in rules)
        self.needs_query = any(r.query for r in self._rules)  # else the query string need not be parsed

    def usage(self, method: str, uri: str, args: Args) -> dict[str, int] | None:
        """The summed `{metric: delta}` of the matching rules, or None when no rule matches; `uri` as
        paths.mapping_uri gives it, `args` as query_args gives them."""
        usage: dict[str, int] | None = None
        method = method.upper()
        for rule in self._rules:
            if rule.matches(method, uri, args):
                usage = usage if usage is not None else {}
                usage[rule.metric] = usage.get(rule.metric, 0) + rule.delta
                if rule.last:
                    break
        return usage
