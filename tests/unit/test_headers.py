"""Header fields kept as bytes: the request's mapping reads like multidict's, and a block for the upstream
refuses anything that would split a header line."""

from __future__ import annotations

import pytest

from proxy.http.headers import Headers, encode_fields
from proxy.transport import HeaderBlock


def test_lookups_ignore_case_and_give_the_first_of_repeated_fields() -> None:
    headers = Headers.of([("Host", "api.example.com"), ("X-Tag", "a"), ("x-tag", "b")])
    assert headers.get("host") == "api.example.com" and headers["HOST"] == "api.example.com"
    assert headers.get("X-TAG") == "a" and headers.getall("x-Tag") == ["a", "b"]
    assert headers.get("missing") is None and headers.get("missing", "-") == "-"
    assert "x-tag" in headers and "missing" not in headers and 42 not in headers
    assert len(headers) == 2 and list(headers) == ["Host", "X-Tag"]
    assert headers.items() == [("Host", "api.example.com"), ("X-Tag", "a"), ("x-tag", "b")]
    assert dict(headers) == {"Host": "api.example.com", "X-Tag": "a"}
    with pytest.raises(KeyError):
        headers["missing"]


def test_undecodable_bytes_survive_the_round_trip() -> None:
    raw = b"caf\xe9"  # latin-1, not UTF-8: a client's bytes, passed on unchanged
    headers = Headers([(b"x-name", b"X-Name", raw)], {b"x-name": raw})
    value = headers["x-name"]
    assert headers.first[b"x-name"] == raw
    assert encode_fields([("X-Name", value)]) == b"X-Name: caf\xe9\r\n"


def test_a_block_knows_its_framing_headers() -> None:
    block = HeaderBlock.of([("Host", "h"), ("Content-Length", " 12 "), ("X-A", "b")])
    assert block.lines == [b"Host: h\r\n", b"Content-Length:  12 \r\n", b"X-A: b\r\n"]
    assert block.has_host and block.content_length == b"12" and not block.transfer_encoding
    assert block.pairs() == [("Host", "h"), ("Content-Length", "12"), ("X-A", "b")]
    chunked = HeaderBlock.of([("Transfer-Encoding", "chunked")])
    assert chunked.transfer_encoding and chunked.content_length is None and not chunked.has_host


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-A", "b\r\nX-Injected: 1"), ("X-A", "b\nc"), ("X-A", "nul\x00"), ("X-A\r\nX-B", "c"), ("X:A", "b"), ("", "b")],
)
def test_a_block_refuses_what_would_split_a_header_line(name: str, value: str) -> None:
    with pytest.raises(ValueError, match="cannot be sent"):
        HeaderBlock.of([(name, value)])
