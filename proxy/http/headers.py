"""Header fields as they came off the wire: bytes, decoded only when someone reads one.

A proxied request is mostly passed through: decoding every field to str, and encoding it again for the
upstream, cost more than the rest of the header handling (measured: README, Performance). Fields stay the
parser's bytes; a lookup decodes the one value it asks for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import overload

Field = tuple[bytes, bytes, bytes]  # (lower-cased name, name as sent, value)

_KEYS: dict[str, bytes] = {}  # names asked for (by code and config, never by a client) → their lookup key
_KEYS_MAX = 1024


def key_of(name: str) -> bytes:
    """The lookup key of a header name: lower-cased latin-1 bytes, remembered for names asked for again."""
    key = _KEYS.get(name)
    if key is None:
        key = name.lower().encode("latin-1", "replace")
        if len(_KEYS) < _KEYS_MAX:
            _KEYS[name] = key
    return key


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")  # undecodable bytes survive as surrogates, as in aiohttp


class Headers(Mapping[str, str]):
    """A request's header fields, case-insensitive and read-only; `get` gives the first of repeated fields
    (as multidict does), `getall` every one, `items` all of them in order."""

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[Field], first: dict[bytes, bytes]) -> None:
        self._fields = fields
        self._first = first  # lower-cased name → the first value sent under it

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, str]]) -> Headers:
        """Headers from str pairs (tests, and answers built by hand)."""
        fields: list[Field] = []
        first: dict[bytes, bytes] = {}
        for name, value in pairs:
            raw = name.encode("latin-1")
            key = raw.lower()
            encoded = value.encode("utf-8", "surrogateescape")
            fields.append((key, raw, encoded))
            first.setdefault(key, encoded)
        return cls(fields, first)

    @property
    def fields(self) -> list[Field]:
        """The fields as parsed, in order: what forwarding passes on without decoding."""
        return self._fields

    @property
    def first(self) -> Mapping[bytes, bytes]:
        """Lower-cased name → the first value sent under it, undecoded (forwarding reads these)."""
        return self._first

    def get_lower(self, key: bytes, default: str = "") -> str:
        """The first value under an already lower-cased name: the hot path's lookup, no key conversion."""
        value = self._first.get(key)
        return default if value is None else _text(value)

    @overload  # type: ignore[override]
    def get(self, name: str) -> str | None: ...

    @overload
    def get(self, name: str, default: str) -> str: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        value = self._first.get(key_of(name))
        return default if value is None else _text(value)

    def getall(self, name: str) -> list[str]:
        key = key_of(name)
        return [_text(v) for k, _, v in self._fields if k == key]

    def __getitem__(self, name: str) -> str:
        value = self._first.get(key_of(name))
        if value is None:
            raise KeyError(name)
        return _text(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and key_of(name) in self._first

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()
        for key, name, _ in self._fields:
            if key not in seen:
                seen.add(key)
                yield name.decode("latin-1")

    def __len__(self) -> int:
        return len(self._first)

    def items(self) -> list[tuple[str, str]]:  # type: ignore[override]
        """Every field in order, repeated names included."""
        return [(name.decode("latin-1"), _text(value)) for _, name, value in self._fields]

    def __repr__(self) -> str:
        return f"<Headers {len(self._fields)} fields>"


def encode_fields(headers: Iterable[tuple[str, str]]) -> bytes:
    """`Name: value\\r\\n` lines for the wire (values as UTF-8, surrogates back to the bytes they stood for)."""
    return "".join([f"{k}: {v}\r\n" for k, v in headers]).encode("utf-8", "surrogateescape")
