"""Request-parameter and timestamp parsing for the 3scale emulator, the way apisonator's Rack 3.1 does it.

Part of `proxy.emulator`; kept apart so the Rack quirks (nested keys, limits, error messages)
can be read in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote_to_bytes

PARAMS_LIMIT = 4096
BYTES_LIMIT = 4 * 1024 * 1024
DEPTH_LIMIT = 32
SYNTAX_ERROR = "request contains syntax errors, should not be repeated without modification"

_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class ParamError(Exception):
    """A request whose parameters Rack refuses to parse: apisonator answers 400 `bad_request`."""


@dataclass
class Params:
    """Parsed request parameters: raw pairs (for recording) and the nested tree (for the protocol)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    tree: dict[str, Any] = field(default_factory=dict)
    bad_utf8: bool = False
    error: str | None = None

    def text(self, name: str) -> str | None:
        """A top-level string parameter; empty strings count as absent (as apisonator normalizes them)."""
        value = self.tree.get(name)
        return value if isinstance(value, str) and value != "" else None


def parse(query: bytes, body: bytes | None = None, form: list[tuple[str, str]] | None = None) -> Params:
    """Parse the query string and a form body (urlencoded bytes or already-decoded multipart pairs).

    Like Rack, the body's top-level keys win over the query's (`GET.merge(POST)`). Never raises: a
    parse failure is returned in `error` so the request can still be recorded.
    """
    params = Params()
    trees: list[dict[str, Any]] = []
    try:
        trees.append(_parse_urlencoded(query, params))
        if body is not None:
            trees.append(_parse_urlencoded(body, params))
        if form is not None:
            trees.append(_parse_decoded(form, params))
    except ParamError as exc:
        params.error = str(exc)
        return params
    for tree in trees:
        params.tree.update(tree)
    return params


def _parse_urlencoded(raw: bytes, params: Params) -> dict[str, Any]:
    """Rack's `parse_nested_query` for one query string or form body, recording the pairs on the way."""
    if len(raw) > BYTES_LIMIT:
        raise ParamError("total query size exceeds limit")
    parts = [p for p in raw.split(b"&") if p]
    if len(parts) > PARAMS_LIMIT:
        raise ParamError(f"total number of query parameters ({len(parts)}) exceeds limit ({PARAMS_LIMIT})")
    tree: dict[str, Any] = {}
    for part in parts:
        raw_key, sep, raw_value = part.partition(b"=")
        key = _decode(_unescape(raw_key), params)
        value = _decode(_unescape(raw_value), params) if sep else None
        params.pairs.append((key, value if value is not None else ""))
        _normalize(tree, key, value, 0)
    return tree


def _parse_decoded(form: list[tuple[str, str]], params: Params) -> dict[str, Any]:
    """Nest already-decoded pairs (multipart form fields)."""
    tree: dict[str, Any] = {}
    for key, value in form:
        params.pairs.append((key, value))
        _normalize(tree, key, value, 0)
    return tree


def _unescape(raw: bytes) -> bytes:
    """`URI.decode_www_form_component`: `+` is a space and a broken %-escape is an error."""
    if _BAD_ESCAPE.search(raw):
        raise ParamError("Invalid query parameters: invalid %-encoding")
    return unquote_to_bytes(raw.replace(b"+", b" "))


def _decode(raw: bytes, params: Params) -> str:
    """Decode UTF-8, remembering (not raising) invalid data: apisonator checks it later, in its own order."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        params.bad_utf8 = True
        return raw.decode("utf-8", errors="replace")


def _split_name(name: str, depth: int) -> tuple[str, str]:
    """Split a parameter name into its first key and the bracketed rest, as Rack 3.1 does."""
    if depth == 0:
        start = name.find("[", 1)
        return (name[:start], name[start:]) if start > 0 else (name, "")
    if name.startswith("[]"):
        return "[]", name[2:]
    if name.startswith("[") and (end := name.find("]", 1)) > 0:
        return name[1:end], name[end + 1 :]
    return name, ""


def _normalize(params: dict[str, Any], name: str, value: str | None, depth: int) -> Any:
    """Rack's `normalize_params`: put one `a[b][]=v` pair into the nested tree (raises on type clashes)."""
    if depth >= DEPTH_LIMIT:
        raise ParamError(SYNTAX_ERROR)
    key, after = _split_name(name, depth)
    if not key:
        return params
    if after == "":
        if key == "[]" and depth != 0:
            return [value]
        params[key] = value
    elif after == "[":
        params[name] = value
    elif after == "[]":
        _expect(params.setdefault(key, []), list).append(value)
    elif after.startswith("[]"):
        _normalize_array_of_hashes(params, key, after, value, depth)
    else:
        child = _expect(params.setdefault(key, {}), dict)
        params[key] = _normalize(child, after, value, depth + 1)
    return params


def _normalize_array_of_hashes(params: dict[str, Any], key: str, after: str, value: str | None, depth: int) -> None:
    """The `x[][y]=v` case: fill the last hash of the array unless it already has `y`."""
    child_key = after[3:-1]
    if not (after[2:3] == "[" and after.endswith("]") and child_key and "[" not in child_key and "]" not in child_key):
        child_key = after[2:]
    items = _expect(params.setdefault(key, []), list)
    if items and isinstance(items[-1], dict) and not _has_key(items[-1], child_key):
        _normalize(items[-1], child_key, value, depth + 1)
    else:
        items.append(_normalize({}, child_key, value, depth + 1))


def _has_key(tree: dict[str, Any], key: str) -> bool:
    """Rack's `params_hash_has_key?`: whether a nested key path is already set."""
    if "[]" in key:
        return False
    node: Any = tree
    for part in re.split(r"[\[\]]+", key):
        if part == "":
            continue
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _expect(node: Any, kind: type) -> Any:
    """Rack's ParameterTypeError (`usage=1&usage[hits]=1`), which apisonator turns into a 400."""
    if not isinstance(node, kind):
        raise ParamError(SYNTAX_ERROR)
    return node


_RUBY_INTEGER = re.compile(
    r"\s*([+-]?)(?:0[xX]([0-9a-fA-F]+(?:_[0-9a-fA-F]+)*)|0[bB]([01]+(?:_[01]+)*)|0[oO_]?([0-7]+(?:_[0-7]+)*)"
    r"|([1-9][0-9]*(?:_[0-9]+)*|0))\s*"
)
_MONTHS = {
    m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}
_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2})([.,]\d+)?)?"
_ZONE = r"(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)"
_FORMATS = [  # Date._parse's common shapes: (regex, the group names in order)
    (
        re.compile(rf"(\d{{4}})[-/](\d{{1,2}})[-/](\d{{1,2}})(?:(?:T|\s+){_TIME})?\s*{_ZONE}?", re.I),
        ("year", "mon", "mday", "hour", "min", "sec", "frac", "zone"),
    ),
    (
        re.compile(rf"(\d{{4}})(\d{{2}})(\d{{2}})(?:T(\d{{2}})(\d{{2}})(\d{{2}})?)?\s*{_ZONE}?", re.I),
        ("year", "mon", "mday", "hour", "min", "sec", "zone"),
    ),
    (
        re.compile(
            rf"(?:[a-z]{{3,9}},?\s+)?(\d{{1,2}})\s+([a-z]{{3,9}})\.?\s+(\d{{4}})(?:\s+{_TIME})?\s*{_ZONE}?", re.I
        ),
        ("mday", "month", "year", "hour", "min", "sec", "frac", "zone"),
    ),
    (
        re.compile(
            rf"(?:[a-z]{{3,9}},?\s+)?([a-z]{{3,9}})\.?\s+(\d{{1,2}}),?\s+(\d{{4}})(?:\s+{_TIME})?\s*{_ZONE}?", re.I
        ),
        ("month", "mday", "year", "hour", "min", "sec", "frac", "zone"),
    ),
]


def parse_timestamp(raw: Any, now: float) -> float:
    """A report transaction's timestamp as Unix seconds, as apisonator's Time.parse_to_utc reads it: Ruby's
    `Integer()` first (sign, 0x/0b/0o or leading-0 octal, underscores between digits), then `Date._parse`,
    which must find a year, a month and a day (a time and an offset are optional: midnight UTC without).
    Of `Date._parse`'s many shapes these are covered: ISO 8601 (with `-` or `/`, `T` or a space, fractions,
    `Z`/`UTC`/`GMT`/`+HH[:MM]`), compact `YYYYMMDD[THHMMSS]`, RFC 2822 (`Fri, 22 Aug 2014 09:06:30 GMT`) and
    `Aug 22 2014`. Anything else, as with apisonator, means `now`."""
    if not isinstance(raw, str) or not raw.strip():
        return now
    match = _RUBY_INTEGER.fullmatch(raw)
    if match is not None:
        sign, hexa, binary, octal, decimal = match.groups()
        digits, base = next((d, b) for d, b in ((hexa, 16), (binary, 2), (octal, 8), (decimal, 10)) if d is not None)
        value = int(digits.replace("_", ""), base)
        return float(-value if sign == "-" else value)
    text = raw.strip()
    for regex, names in _FORMATS:
        found = regex.fullmatch(text)
        if found is None:
            continue
        parts = dict(zip(names, found.groups(), strict=True))
        month = _MONTHS.get((parts.get("month") or "")[:3].lower()) if "month" in parts else int(parts["mon"])
        if month is None:
            return now
        try:
            moment = datetime(
                int(parts["year"]),
                month,
                int(parts["mday"]),
                int(parts.get("hour") or 0),
                int(parts.get("min") or 0),
                int(parts.get("sec") or 0),
                tzinfo=_zone(parts.get("zone")),
            )
        except ValueError:
            return now
        fraction = parts.get("frac")
        return moment.timestamp() + (float("0." + fraction[1:]) if fraction else 0.0)
    return now


def _zone(text: str | None) -> timezone:
    """A UTC offset from `Z`, `UTC`, `+0200` or `-02:00`; none means UTC, as apisonator assumes."""
    if text is None or text.upper() in ("Z", "UTC", "GMT"):
        return UTC
    digits = text[1:].replace(":", "")
    offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
    return timezone(-offset if text[0] == "-" else offset)
