"""Parse 3scale's `<status>` and `<error>` documents (THREESCALE.md §2) into the plain models.

The real server writes some text unescaped (`<reason>`, the oauth `<application>` fields, key ids), so a
document that is not well-formed XML gets one tolerant second try before it is called unparseable.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime

from .errors import UnparseableResponse
from .models import AuthStatus, LimitHeaders, UsageReport

TIME_FORMAT = "%Y-%m-%d %H:%M:%S %z"
EMPTY_403_CODE = "bad_request"
"""Code given to a bare 403 with an empty body: 3scale's answer to a malformed `usage` (not a hash)."""

REJECTION_REASON_HEADER = "3scale-rejection-reason"
LIMIT_REMAINING_HEADER = "3scale-limit-remaining"
LIMIT_RESET_HEADER = "3scale-limit-reset"
LIMIT_MAX_VALUE_HEADER = "3scale-limit-max-value"

# 409 reasons and their codes, for when the rejection-reason header was not asked for (THREESCALE.md §2).
_REASON_CODES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.S), code)
    for pattern, code in (
        (r"usage limits are exceeded", "limits_exceeded"),
        (r"application key is missing|application key \".*\" is invalid", "application_key_invalid"),
        (r"application is not active", "application_not_active"),
        (r"service is not active", "service_not_active"),
        (r"referrer is missing|referrer \".*\" is not allowed", "referrer_not_allowed"),
        (r"oauth is not enabled", "oauth_not_enabled"),
        (r"redirect_uri \".*\" is invalid", "redirect_uri_invalid"),
        (r"redirect_url \".*\" is invalid", "redirect_url_invalid"),
    )
)

# Elements whose text apisonator writes without escaping; their content is escaped on the second try.
_RAW_TEXT = re.compile(
    r"(?P<open><(?P<tag>reason|id|key|redirect_url|redirect_uri)>)(?P<text>.*?)(?P<close></(?P=tag)>)", re.S
)
_RAW_ERROR = re.compile(r"(?P<open><error\b[^>]*>)(?P<text>.*)(?P<close></error>)", re.S)
_BARE_AMPERSAND = re.compile(r"&(?!#[0-9]+;|#x[0-9a-fA-F]+;|[A-Za-z_][\w.-]*;)")
_INVALID_XML_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def parse_auth_response(body: bytes | str, http_status: int, headers: Mapping[str, str]) -> AuthStatus:
    """Turn any 2xx/4xx answer of authorize/authrep into an AuthStatus (5xx is the caller's business)."""
    if not _text(body).strip():
        return _empty_auth_response(http_status, headers)
    root = _parse_document(body, http_status)
    if root.tag == "status":
        return _status_from_element(root, http_status, headers)
    if root.tag == "error" and 400 <= http_status < 500:
        code, message = _error_from_element(root)
        return AuthStatus(authorized=False, http_status=http_status, code=code, reason=message)
    raise UnparseableResponse(f"unexpected <{root.tag}> document with {http_status}", status=http_status)


def parse_status(body: bytes | str, http_status: int, headers: Mapping[str, str]) -> AuthStatus:
    """Parse a `<status>` document; `code` comes from the rejection-reason header, else from the reason."""
    root = _parse_document(body, http_status)
    if root.tag != "status":
        raise UnparseableResponse(f"expected <status>, got <{root.tag}>", status=http_status)
    return _status_from_element(root, http_status, headers)


def parse_error(body: bytes | str, http_status: int) -> tuple[str, str]:
    """Parse `<error code="...">message</error>` into (code, message)."""
    root = _parse_document(body, http_status)
    if root.tag != "error":
        raise UnparseableResponse(f"expected <error>, got <{root.tag}>", status=http_status)
    return _error_from_element(root)


def parse_limit_headers(headers: Mapping[str, str]) -> LimitHeaders | None:
    """Read the `3scale-limit-*` headers; None when absent or malformed (they are advisory)."""
    lowered = _lower_keys(headers)
    remaining = _header_int(lowered, LIMIT_REMAINING_HEADER)
    reset = _header_int(lowered, LIMIT_RESET_HEADER)
    if remaining is None or reset is None:
        return None
    return LimitHeaders(remaining=remaining, reset=reset, max_value=_header_int(lowered, LIMIT_MAX_VALUE_HEADER))


def code_from_reason(reason: str | None) -> str | None:
    """Map a 409 `<reason>` text to its code, as Ruby clients do when no header carries it."""
    if not reason:
        return None
    for pattern, code in _REASON_CODES:
        if pattern.fullmatch(reason):
            return code
    return None


def _empty_auth_response(http_status: int, headers: Mapping[str, str]) -> AuthStatus:
    """An empty body: `no_body=1` on 200/409, or the bare 403 of a malformed `usage`."""
    if 200 <= http_status < 300 or http_status == 409:
        authorized = http_status != 409
        return AuthStatus(
            authorized=authorized,
            http_status=http_status,
            code=None if authorized else _lower_keys(headers).get(REJECTION_REASON_HEADER),
            limit_headers=parse_limit_headers(headers),
        )
    if http_status == 403:
        return AuthStatus(
            authorized=False, http_status=403, code=EMPTY_403_CODE, reason="empty 403 from 3scale (malformed usage?)"
        )
    raise UnparseableResponse(f"empty body with {http_status}", status=http_status)


def _status_from_element(root: ET.Element, http_status: int, headers: Mapping[str, str]) -> AuthStatus:
    authorized = _authorized(root, http_status)
    reason = _child_text(root, "reason")
    code = None
    if not authorized:
        code = _lower_keys(headers).get(REJECTION_REASON_HEADER) or code_from_reason(reason)
    return AuthStatus(
        authorized=authorized,
        http_status=http_status,
        reason=reason,
        code=code,
        plan=_child_text(root, "plan"),
        usage_reports=tuple(_usage_report(el, http_status) for el in root.iterfind("usage_reports/usage_report")),
        hierarchy=_hierarchy(root),
        limit_headers=parse_limit_headers(headers),
    )


def _authorized(root: ET.Element, http_status: int) -> bool:
    value = _child_text(root, "authorized")
    if value not in ("true", "false"):
        raise UnparseableResponse(f"<authorized> is {value!r}", status=http_status)
    return value == "true"


def _usage_report(el: ET.Element, http_status: int) -> UsageReport:
    try:
        return UsageReport(
            metric=el.attrib["metric"],
            period=el.attrib["period"],
            period_start=_time(_child_text(el, "period_start")),
            period_end=_time(_child_text(el, "period_end")),
            max_value=int(_child_text(el, "max_value") or ""),
            current_value=int(_child_text(el, "current_value") or ""),
            exceeded=el.attrib.get("exceeded") == "true",
        )
    except (KeyError, ValueError) as exc:
        raise UnparseableResponse(f"bad <usage_report>: {exc}", status=http_status) from None


def _hierarchy(root: ET.Element) -> dict[str, tuple[str, ...]]:
    """`<metric name children>` entries; a metric with several limits is listed several times."""
    return {
        metric.attrib["name"]: tuple(metric.attrib.get("children", "").split())
        for metric in root.iterfind("hierarchy/metric")
        if "name" in metric.attrib
    }


def _error_from_element(root: ET.Element) -> tuple[str, str]:
    return root.attrib.get("code", ""), (root.text or "").strip()


_TIMES: dict[str, datetime] = {}
_TIMES_MAX = 1024  # every answer in a window carries the same period times: parse each once (strptime is slow)


def _time(value: str | None) -> datetime | None:
    """`2010-05-15 00:00:00 +0000` (or the old `+00:00`) as an aware datetime; None for eternity."""
    if not value:
        return None
    parsed = _TIMES.get(value)
    if parsed is None:
        parsed = datetime.strptime(value, TIME_FORMAT)
        if len(_TIMES) >= _TIMES_MAX:
            _TIMES.clear()
        _TIMES[value] = parsed
    return parsed


def _child_text(el: ET.Element, tag: str) -> str | None:
    child = el.find(tag)
    if child is None:
        return None
    return (child.text or "").strip()


def _parse_document(body: bytes | str, http_status: int) -> ET.Element:
    """ElementTree first; on failure once more with the raw-text fields escaped; else unparseable."""
    if not _text(body).strip():
        raise UnparseableResponse(f"empty body with {http_status}", status=http_status)
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        pass
    try:
        return ET.fromstring(_sanitize(_text(body)))
    except ET.ParseError:
        raise UnparseableResponse(f"body of the {http_status} response is not XML", status=http_status) from None


def _sanitize(text: str) -> str:
    """Escape what apisonator leaves raw, so `referrer "a&b<c" is not allowed` still parses."""
    text = _INVALID_XML_CHARS.sub("", text)
    text = _RAW_TEXT.sub(_escape_brackets, text)
    text = _RAW_ERROR.sub(_escape_brackets, text)
    return _BARE_AMPERSAND.sub("&amp;", text)


def _escape_brackets(match: re.Match[str]) -> str:
    """Escape `<` and `>` in a raw text field; `&` is left to the bare-ampersand pass (keeps `&amp;` as is)."""
    text = match["text"].replace("<", "&lt;").replace(">", "&gt;")
    return f"{match['open']}{text}{match['close']}"


def _text(body: bytes | str) -> str:
    return body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _header_int(lowered: Mapping[str, str], name: str) -> int | None:
    try:
        return int(lowered[name])
    except (KeyError, ValueError):
        return None
