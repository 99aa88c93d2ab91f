"""JSON logs: one line per request and structured process events, with credentials masked.

Records go through a queue to a thread that formats them and writes each batch in one write, so no
request waits on stdout (a slow log driver, a full pipe) and JSON encoding stays off the event loop.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .redact import mask

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "mask", "setup_logging"]

ACCESS_LOGGER = "threescale_proxy.access"
QUEUE_MAX = 100_000  # records waiting for the writer thread; past it new records are dropped, not awaited
PIPE_BUF = 4096  # POSIX: a write of at most this many bytes to a pipe is never interleaved with another's


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed as `extra={"fields": {...}}` are merged in, after the
    process's own `static` fields (a worker's `worker` and `pid`)."""

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._static,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str)


class _EnqueueHandler(logging.Handler):
    """Hands the record over as it is (the writer thread formats it); never blocks the event loop."""

    def __init__(self, records: queue.SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__()
        self._records = records

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: SimpleQueue is thread-safe
        if self._records.qsize() < QUEUE_MAX:
            self._records.put_nowait(record)
        return True  # past QUEUE_MAX records are dropped, not awaited

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


class _BatchWriter(threading.Thread):
    """Formats records and writes all that are waiting in one write (one syscall per batch of lines).

    With `shared` (several processes write to one stdout pipe: the workers of a supervisor) a batch goes out
    in writes of whole lines of at most PIPE_BUF bytes, which the kernel never interleaves with another
    process's writes, so no line is cut by another's.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord | None],
        stream: TextIO,
        static: Mapping[str, Any] | None = None,
        shared: bool = False,
    ) -> None:
        super().__init__(name="log-writer", daemon=True)
        self._records = records
        self._stream = stream
        self._formatter = JsonFormatter(static)
        self._shared = shared

    def run(self) -> None:
        records, formatter = self._records, self._formatter
        while True:
            batch = [records.get()]
            while len(batch) < 4096:
                try:
                    batch.append(records.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            lines = []
            for record in batch:
                if record is not None:
                    try:
                        lines.append(formatter.format(record))
                    except Exception:  # a record that cannot be formatted must not stop the writer
                        lines.append(json.dumps({"level": "error", "msg": "unformattable log record"}))
            if lines:
                with contextlib.suppress(OSError, ValueError):
                    for chunk in _pipe_sized(lines) if self._shared else ("\n".join(lines) + "\n",):
                        self._stream.write(chunk)
                        self._stream.flush()
            if stop:
                return

    def stop(self) -> None:
        self._records.put(None)
        self.join(timeout=5)


def _pipe_sized(lines: list[str]) -> list[str]:
    """Whole lines joined into chunks of at most PIPE_BUF bytes (a longer line is a chunk of its own)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 1
        if current and size + n > PIPE_BUF:
            chunks.append("\n".join(current) + "\n")
            current, size = [], 0
        current.append(line)
        size += n
    if current:
        chunks.append("\n".join(current) + "\n")
    return chunks


_writer: _BatchWriter | None = None


def setup_logging(
    level: str = "info",
    stream: TextIO | None = None,
    *,
    fields: Mapping[str, Any] | None = None,
    shared: bool = False,
) -> None:
    """Route every logger through the JSON formatter on stdout (what ECS awslogs and kubectl read).

    `fields` go into every line (a worker's `worker` and `pid`); `shared`: other processes write to the same
    stream, so lines are written in pipe-atomic chunks.
    """
    global _writer
    if _writer is not None:
        _writer.stop()
    records: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    _writer = _BatchWriter(records, stream or sys.stdout, fields, shared)
    _writer.start()
    atexit.register(stop_logging)
    root = logging.getLogger()
    root.handlers[:] = [_EnqueueHandler(records)]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def stop_logging() -> None:
    """Write what is still queued and stop the writer thread (at exit, after the last record)."""
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None
