"""Step 3: map method + path + query to 3scale usage with the service's mapping rules (3scale semantics).

`{name}` matches one path segment, a trailing `$` anchors the end (otherwise a rule is a prefix),
query parameters in a pattern must be present (and equal, unless `{name}`), and every matching rule
adds its delta unless an earlier matching rule has `last: true`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import MappingRuleSettings

_PLACEHOLDER = re.compile(r"\{[^{}/]+\}")


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A mapping rule ready to test: a path regex and required query parameters."""

    method: str
    path: re.Pattern[str]
    query: tuple[tuple[str, str | None], ...]
    metric: str
    delta: int
    last: bool

    def matches(self, method: str, path: str, query: Mapping[str, str]) -> bool:
        """Method (or ANY), path regex, then each required query parameter."""
        if self.method != "ANY" and self.method != method:
            return False
        if self.path.match(path) is None:
            return False
        for name, value in self.query:
            got = query.get(name)
            if got is None or (value is not None and got != value):
                return False
        return True


def compile_rule(rule: MappingRuleSettings) -> CompiledRule:
    """Turn a configured pattern like `/v1/orders/{id}$?fields={f}` into a CompiledRule."""
    path_part, _, query_part = rule.pattern.partition("?")
    anchored = path_part.endswith("$")
    if anchored:
        path_part = path_part[:-1]
    regex = ""
    pos = 0
    for m in _PLACEHOLDER.finditer(path_part):
        regex += re.escape(path_part[pos : m.start()]) + r"[^/]+"
        pos = m.end()
    regex += re.escape(path_part[pos:])
    regex = "^" + regex + ("$" if anchored else "")
    query: list[tuple[str, str | None]] = []
    for pair in filter(None, query_part.split("&")):
        name, _, value = pair.partition("=")
        query.append((name, None if _PLACEHOLDER.fullmatch(value) else value))
    return CompiledRule(
        method=rule.method.upper(),
        path=re.compile(regex),
        query=tuple(query),
        metric=rule.metric,
        delta=rule.delta,
        last=rule.last,
    )


class Mapper:
    """A service's compiled mapping rules, in configuration order."""

    def __init__(self, rules: Sequence[MappingRuleSettings]) -> None:
        self._rules = tuple(compile_rule(r) for r in rules)
        self.needs_query = any(r.query for r in self._rules)  # else the query string need not be parsed

    def usage(self, method: str, path: str, query: Mapping[str, str]) -> dict[str, int] | None:
        """The summed `{metric: delta}` of the matching rules, or None when no rule matches."""
        usage: dict[str, int] | None = None
        method = method.upper()
        for rule in self._rules:
            if rule.matches(method, path, query):
                usage = usage if usage is not None else {}
                usage[rule.metric] = usage.get(rule.metric, 0) + rule.delta
                if rule.last:
                    break
        return usage
