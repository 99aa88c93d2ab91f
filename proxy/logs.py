"""JSON logs: one line per request and structured process events, with credentials masked.

Records go through a queue to a thread that formats and writes them, so no request waits on stdout
(a slow log driver, a full pipe) and JSON encoding stays off the event loop.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import time
from typing import Any, TextIO

from .redact import mask

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "mask", "setup_logging"]

ACCESS_LOGGER = "threescale_proxy.access"
QUEUE_MAX = 100_000  # records waiting for the writer thread; past it new records are dropped, not awaited


class JsonFormatter(logging.Formatter):
    """One JSON object per line; fields passed as `extra={"fields": {...}}` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str)


class _EnqueueHandler(logging.handlers.QueueHandler):
    """Hands the record over as it is: the writer thread formats it (QueueHandler would format here)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            pass  # never block the event loop on logging


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger through the JSON formatter on stdout (what ECS awslogs and kubectl read)."""
    global _listener
    if _listener is not None:
        _listener.stop()
    writer = logging.StreamHandler(stream or sys.stdout)
    writer.setFormatter(JsonFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_MAX)
    _listener = logging.handlers.QueueListener(records, writer, respect_handler_level=False)
    _listener.start()
    atexit.register(stop_logging)
    root = logging.getLogger()
    root.handlers[:] = [_EnqueueHandler(records)]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def stop_logging() -> None:
    """Write what is still queued and stop the writer thread (at exit, after the last record)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
