"""The request path as nginx hands it to APIcast, and a mapping rule's pattern as APIcast turns it into a regex.

nginx decodes `%XX`, merges repeated slashes and resolves `.` and `..` segments (`ngx.var.uri`); APIcast
re-escapes that with nginx's URI escaping before matching (`escape_uri(ngx.var.uri)`). Matching the same
string is what makes a rule match here exactly where it matches there: `%20` patterns, `//`, `/../`, and a
`$` that a trailing newline cannot fool (the newline is `%0A` by then).
"""

from __future__ import annotations

import functools
import re

# nginx's NGX_ESCAPE_URI set: " ", "#", "%", "?", the controls, DEL and every byte above it
_ESCAPED = frozenset(range(0x21)) | {0x23, 0x25, 0x3F} | frozenset(range(0x7F, 0x100))
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = tuple(f"%{b:02X}" if b in _ESCAPED else chr(b) for b in range(256))


_SLASHES = re.compile(r"//+")
_PLACEHOLDER = re.compile(r"\{.+?\}")
_PLACEHOLDER_CLASS = r"[\w\-.~%!$&'()*+,;=@:]+"


def pattern_regex(pattern: str) -> str:
    """APIcast's `regexpify`: the regex source for a pattern's path part (compile it with re.ASCII, as PCRE's
    `\\w` is ASCII there). Repeated slashes become one, `{name}` a character class, `.` literal."""
    path = _SLASHES.sub("/", pattern).partition("?")[0]
    path = _PLACEHOLDER.sub(lambda _m: _PLACEHOLDER_CLASS, path)
    return "^" + path.replace(".", r"\.")


class BadPath(ValueError):
    """A path nginx refuses with 400: a malformed `%` escape, or `..` above the root."""


def mapping_uri(path: str) -> str:
    """The path part of a request target (as sent, undecoded) as APIcast matches it; BadPath if nginx
    would refuse it. Plain paths (the common case) come back unchanged."""
    if path.isascii() and "%" not in path and "//" not in path and "/." not in path:
        return path
    return _normalized(path)


@functools.lru_cache(maxsize=1024)
def _normalized(path: str) -> str:
    raw = path.encode("utf-8", "surrogateescape")
    decoded = _unescape(raw) if b"%" in raw else raw
    segments: list[bytes] = []
    parts = decoded.split(b"/")
    for part in parts[1:]:
        if part == b"" or part == b".":
            continue
        if part == b"..":
            if not segments:
                raise BadPath("the path climbs above the root")
            segments.pop()
            continue
        segments.append(part)
    trailing = len(parts) > 1 and parts[-1] in (b"", b".", b"..")
    uri = b"/" + b"/".join(segments) + (b"/" if trailing and segments else b"")
    return "".join([_ESCAPES[b] for b in uri])


def _unescape(raw: bytes) -> bytes:
    """`%XX` decoded; any other `%` makes the path malformed (nginx answers 400)."""
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise BadPath("a malformed percent-escape in the path")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return bytes(out)
