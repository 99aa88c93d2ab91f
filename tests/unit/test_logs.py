"""JSON logs written by a thread behind a queue, with secrets masked."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from proxy.logs import setup_logging, stop_logging
from proxy.redact import mask, scrub_reason


@pytest.fixture
def json_logging():
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = io.StringIO()
    setup_logging("info", out)
    yield out
    stop_logging()
    root.handlers[:], root.level = saved, level


def test_records_are_formatted_and_written_by_another_thread(json_logging, monkeypatch):
    from proxy import logs

    threads = []
    real_format = logs.JsonFormatter.format
    monkeypatch.setattr(
        logs.JsonFormatter, "format", lambda self, r: threads.append(threading.get_ident()) or real_format(self, r)
    )
    log = logging.getLogger("threescale_proxy.access")
    log.info("request", extra={"fields": {"status": 200, "key": mask("valid-key-0123456789")}})
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("proxy.x").exception("crashed")
    logging.getLogger("proxy.x").debug("below the level")
    stop_logging()  # drains the queue
    lines = [json.loads(line) for line in json_logging.getvalue().splitlines()]
    assert [(e["logger"], e["level"], e["msg"]) for e in lines] == [
        ("threescale_proxy.access", "info", "request"),
        ("proxy.x", "error", "crashed"),
    ]
    assert lines[0]["status"] == 200 and lines[0]["key"] == "vali…6789"
    assert "ValueError: boom" in lines[1]["exc"]
    assert threads and threading.get_ident() not in threads  # the caller never formats


def test_masks_and_scrubs_never_show_a_usable_secret():
    assert mask("short") == "…" and mask(None) is None
    assert scrub_reason('user key "valid-key-0123456789" is invalid') == "user key is invalid"


def test_a_worker_s_lines_carry_its_fields_and_go_out_in_pipe_atomic_writes():
    from proxy import logs

    class Recorder(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, s: str) -> int:
            self.writes.append(s)
            return super().write(s)

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = Recorder()
    try:
        logs.setup_logging("info", out, fields={"worker": 1, "pid": 4242}, shared=True)
        log = logging.getLogger("threescale_proxy.access")
        for i in range(300):
            log.info("request", extra={"fields": {"path": f"/v1/{i}", "pad": "é" * 50}})
        stop_logging()
    finally:
        root.handlers[:], root.level = saved, level
    entries = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(entries) == 300 and {(e["worker"], e["pid"]) for e in entries} == {(1, 4242)}
    assert all(len(w.encode()) <= logs.PIPE_BUF and w.endswith("\n") for w in out.writes)
    assert len(out.writes) > 1
