"""Log lines: one JSON object per line, for the service's loggers and gunicorn's alike.

Every line has ``timestamp`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``,
``message``, ``request_id`` (the request being served, from ``REQUEST_ID``; ``null``
outside a request) and ``pid``; ``exception`` (the formatted traceback, one string)
when the record carries one; and the fields a record was given as
``extra={"fields": {...}}`` (the request line's ``method``, ``route``, ``status``,
``duration_ms``).

The request line is written for every request, so formatting is one ``orjson.dumps``
of a small dict; the timestamp's date and time are formatted once a second.
Nothing here reads headers: what a line holds is what the caller put in it (the
request line never carries the ``Authorization`` header or the query string).
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from typing import Any

import orjson

#: The id of the request the current thread is serving (``app.observability`` sets it
#: before the request and resets it after); ``None`` outside a request.
REQUEST_ID: ContextVar[str | None] = ContextVar("goledger_request_id", default=None)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (see the module docstring for its fields)."""

    def __init__(self) -> None:
        super().__init__()
        # (whole second, its "YYYY-MM-DDTHH:MM:SS"), replaced as one tuple: threads share it.
        self._second: tuple[int, str] = (0, "")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": REQUEST_ID.get(),
            "pid": record.process,
        }
        fields = record.__dict__.get("fields")
        if fields:
            entry.update(fields)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field orjson cannot encode is written as its str(), not lost.
        return orjson.dumps(entry, default=str).decode("utf-8")

    def _timestamp(self, created: float) -> str:
        second = int(created)
        cached_second, prefix = self._second
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        return f"{prefix}.{int((created - second) * 1000):03d}Z"


def configure_logging(level: str) -> None:
    """JSON lines on stderr for every logger, the service's (``goledger.*``) at ``level``.

    The handler goes on the root logger, once, so that libraries' warnings (psycopg's
    pool, Flask) are JSON lines too; gunicorn's own loggers do not propagate there and
    get the same formatter from ``app.serving.JsonGunicornLogger``.
    """
    logging.getLogger("goledger").setLevel(level)
    root = logging.getLogger()
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
